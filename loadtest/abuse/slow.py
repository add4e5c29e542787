"""Slow uploads and slow gRPC streams from one address while callers on other addresses use the crop path.

    python -m loadtest.abuse.slow --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 [--duration 60] [--kind both]

Issue 18 item 3: nginx's ``client_body_timeout`` is per read, so a body trickled at 1 KB every 5 s held its
connection forever, and 1,100 of them (reopened as they closed) took every slot of the door. The attacker here
binds 127.0.0.2 and the victims 127.0.0.3 and up (Linux routes all of 127/8 to lo, so each is a distinct client
address for the door's per-address limits). Raw sockets and asyncio: no client library would trickle on purpose.

* ``uploads``: HTTP/1.1 POSTs to the crop model declaring a 1 MB body and sending 1 KB every 5 s;
* ``streams``: HTTP/2 connections (100 gRPC ModelInfer streams each, hand-framed: HEADERS then 1 byte of DATA
  every 5 s), the 1,100 streams on 11 connections of the probe.

Victims: HTTP crop calls in a loop, one thread per address. ``tests/test_door_limits.py`` runs a short version
(``make test``); this CLI the 60 s one of the issue's targets (>= 99% victim success).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import io
import json
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from common import contract
from common.ports import default_address
from loadtest import cli

ATTACKER = "127.0.0.2"
VICTIMS = tuple(f"127.0.0.{i}" for i in range(3, 7))
#: Issue 18's probe: 1,100 uploads, 1 KB every 5 s.
CONNECTIONS = 1100
CHUNK = 1024
EVERY_S = 5.0
STREAMS_PER_CONNECTION = 100
CROP_PATH = f"/v2/models/{contract.CROP_ENSEMBLE}/infer"
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Tally:
    opened: int = 0
    refused: int = 0  # HTTP 429 / gRPC streams ended by the door before their body was sent
    closed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, err: BaseException) -> None:
        self.errors[type(err).__name__] = self.errors.get(type(err).__name__, 0) + 1


#: Linux's IP_BIND_ADDRESS_NO_PORT (Python 3.11 does not name it): bind an address now, pick the port at connect().
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def _connect(host: str, port: int, tally: Tally):
    """The attacker's next connection, from its own address; None (after a pause) when the door refuses it.

    The port is chosen at connect(), as for any client, not at bind(): a port bound explicitly must be free of every
    TIME_WAIT socket of the attacker's address, and after some 15,000-20,000 refused and closed probes (a few
    seconds of this attack) the reconnections stalled in bind's search of the ephemeral range, under load on two
    cores for long enough that the door saw only one wave of them (docs/security.md, "Fair sharing at the door").
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((ATTACKER, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return await asyncio.open_connection(sock=sock)
    except OSError as err:
        sock.close()
        tally.error(err)
        await asyncio.sleep(0.5)
        return None


# --- HTTP/1.1 slow uploads -------------------------------------------------------------------------------------


async def _slow_upload(host: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    """One connection at a time, reopened as it closes, until ``stop``."""
    while not stop.is_set():
        if (streams := await _connect(host, port, tally)) is None:
            continue
        reader, writer = streams
        tally.opened += 1
        try:
            head = (
                f"POST {CROP_PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {2**20}\r\n"
                "Inference-Header-Content-Length: 100\r\n\r\n"
            )
            writer.write(head.encode())
            status = asyncio.ensure_future(reader.readline())
            while not stop.is_set() and not status.done():
                writer.write(b"x" * CHUNK)
                await writer.drain()
                await asyncio.wait([status], timeout=EVERY_S)
            if status.done() and status.result().split(b" ")[1:2] == [b"429"]:
                tally.refused += 1
            status.cancel()
        except (OSError, IndexError) as err:
            tally.error(err)
        finally:
            tally.closed += 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- HTTP/2 slow gRPC streams (hand-framed: no h2 dependency) ----------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY = 0, 1, 3, 4, 6, 7
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    # HPACK "literal header field without indexing, new name", no Huffman; every string here is < 127 bytes.
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _grpc_headers(authority: str) -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", GRPC_INFER),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return b"".join(_literal(k, v) for k, v in fields)


async def _h2_reader(reader, writer, ended: set[int]) -> None:
    """Answers SETTINGS and PING; records streams the server ended (END_STREAM or RST_STREAM)."""
    while True:
        head = await reader.readexactly(9)
        length, kind, flags, stream = int.from_bytes(head[:3], "big"), head[3], head[4], int.from_bytes(head[5:], "big")
        payload = await reader.readexactly(length)
        stream &= 0x7FFFFFFF
        if kind == _SETTINGS and not flags & _ACK:
            writer.write(_frame(_SETTINGS, _ACK, 0))
        elif kind == _PING and not flags & _ACK:
            writer.write(_frame(_PING, _ACK, 0, payload))
        elif kind == _RST or (kind in (_HEADERS, _DATA) and flags & _END_STREAM):
            ended.add(stream)
        elif kind == _GOAWAY:
            return


async def _slow_streams(host: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    """One HTTP/2 connection with STREAMS_PER_CONNECTION trickling streams, reopened as it closes."""
    while not stop.is_set():
        if (streams := await _connect(host, port, tally)) is None:
            continue
        reader, writer = streams
        ended: set[int] = set()
        reading = asyncio.ensure_future(_h2_reader(reader, writer, ended))
        try:
            writer.write(_PREFACE + _frame(_SETTINGS, 0, 0))
            block = _grpc_headers(f"{host}:{port}")
            streams = [2 * i + 1 for i in range(STREAMS_PER_CONNECTION)]
            for stream in streams:
                writer.write(_frame(_HEADERS, _END_HEADERS, stream, block))
                # gRPC message prefix: not compressed, 1 MB announced; the rest never comes in time.
                writer.write(_frame(_DATA, 0, stream, b"\x00" + struct.pack(">I", 2**20)))
            tally.opened += len(streams)
            await writer.drain()
            while not stop.is_set() and not reading.done():
                await asyncio.wait([reading], timeout=EVERY_S)
                for stream in streams:
                    if stream not in ended:
                        writer.write(_frame(_DATA, 0, stream, b"x"))
                await writer.drain()
        except OSError as err:
            tally.error(err)
        finally:
            tally.refused += len(ended)
            tally.closed += 1
            reading.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _attack(kind: str, host: str, port: int, tally: Tally, stop: asyncio.Event) -> None:
    if kind == "uploads":
        tasks = [_slow_upload(host, port, tally, stop) for _ in range(CONNECTIONS)]
    else:
        tasks = [_slow_streams(host, port, tally, stop) for _ in range(CONNECTIONS // STREAMS_PER_CONNECTION)]
    await asyncio.gather(*tasks, return_exceptions=True)


# --- victims -------------------------------------------------------------------------------------------------------


def _crop_tensor():
    """One 64 x 64 JPEG as the crop path's [1, 1] BYTES input."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 70)).save(buf, "JPEG")
    return np.array([[buf.getvalue()]], dtype=object)


def crop_request() -> tuple[bytes, dict[str, str]]:
    """A well-formed crop-path request in the binary data extension (how tritonclient sends it)."""
    import tritonclient.http as httpclient

    inp = httpclient.InferInput(contract.CROP_INPUT, [1, 1], "BYTES")
    inp.set_data_from_numpy(_crop_tensor(), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([inp])
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def _victim(address: str, host: str, port: int, stop: threading.Event, outcomes: list[str]) -> None:
    body, headers = crop_request()
    while not stop.is_set():
        conn = http.client.HTTPConnection(host, port, timeout=30, source_address=(address, 0))
        try:
            conn.request("POST", CROP_PATH, body, headers)
            response = conn.getresponse()
            answer = response.read()
            json_part = answer[: int(response.getheader("Inference-Header-Content-Length") or len(answer))]
            ok = response.status == 200 and "outputs" in json.loads(json_part)
            outcomes.append("ok" if ok else f"HTTP {response.status}")
        except (OSError, http.client.HTTPException, ValueError) as err:
            outcomes.append(type(err).__name__)
        finally:
            conn.close()


def _grpc_victim(url: str, stop: threading.Event, outcomes: list[str]) -> None:
    """A gRPC caller from 127.0.0.1 (tritonclient cannot pick its source address; the attacker is 127.0.0.2)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    inp = grpcclient.InferInput(contract.CROP_INPUT, [1, 1], "BYTES")
    inp.set_data_from_numpy(_crop_tensor())
    client = grpcclient.InferenceServerClient(url)
    try:
        while not stop.is_set():
            try:
                client.infer(contract.CROP_ENSEMBLE, [inp], client_timeout=30)
                outcomes.append("ok")
            except InferenceServerException as err:
                outcomes.append(f"gRPC {err.status()}")
    finally:
        client.close()


def run(http_url: str, grpc_url: str, kind: str, duration: float, ramp: float = 2.0) -> dict:
    """Attack for ``ramp + duration`` s; victims call during the last ``duration`` s. Returns the tallies."""
    host, port = http_url.rsplit(":", 1)
    target = (host, int(port)) if kind == "uploads" else (grpc_url.rsplit(":", 1)[0], int(grpc_url.rsplit(":", 1)[1]))
    tally, outcomes, done = Tally(), [], threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def attack() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_attack(kind, *target, tally, stop))

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    time.sleep(ramp)
    victims = [threading.Thread(target=_victim, args=(a, host, int(port), done, outcomes)) for a in VICTIMS]
    if kind == "streams":
        victims.append(threading.Thread(target=_grpc_victim, args=(grpc_url, done, outcomes)))
    for v in victims:
        v.start()
    time.sleep(duration)
    done.set()
    for v in victims:
        v.join(60)
    loop.call_soon_threadsafe(stop.set)
    attacker.join(EVERY_S + 10)
    ok = outcomes.count("ok")
    failures: dict[str, int] = {}
    for o in outcomes:
        if o != "ok":
            failures[o] = failures.get(o, 0) + 1
    return {
        "kind": kind,
        "duration_s": duration,
        "attacker": {"opened": tally.opened, "refused": tally.refused, "closed": tally.closed, "errors": tally.errors},
        "victims": {"requests": len(outcomes), "ok": ok, "failures": failures},
        "victim_success": ok / len(outcomes) if outcomes else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http-url", default=default_address("http"))
    p.add_argument("--grpc-url", default=default_address("grpc"))
    p.add_argument("--kind", choices=("uploads", "streams", "both"), default="both")
    p.add_argument("--duration", type=cli.positive_float, default=60.0, help="seconds the victims call while attacked")
    p.add_argument("--min-success", type=float, default=0.99, help="exit 1 below this victim success ratio")
    args = p.parse_args(argv)
    worst = 1.0
    for kind in ("uploads", "streams") if args.kind == "both" else (args.kind,):
        report = run(args.http_url, args.grpc_url, kind, args.duration)
        print(json.dumps(report), flush=True)
        worst = min(worst, report["victim_success"])
    return 0 if worst >= args.min_success else 1


if __name__ == "__main__":
    sys.exit(main())
