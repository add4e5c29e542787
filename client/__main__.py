"""Command line: ``agegender photo.jpg [more.jpg ...] [--url URL] [--protocol grpc|http] [--json]``.

Installed by ``make setup`` as ``.venv/bin/agegender`` (the same as ``.venv/bin/python -m client``).

``-`` as an IMAGE reads the photo from standard input (``curl -s URL | agegender -``), once, up to the server's
upload limit; its line names it ``-``.

Prints one line per image, in the order given: a human-readable summary (``age 34.2 (27-41)``: the estimate and
its 80% interval), or with ``--json`` one JSON object with keys file, age, age_low, age_high, gender,
female_probability, face_found, box, detection_score and error (age_low/age_high: the 10th/90th percentile of
the age model's distribution, null where there is no face or the model gives no interval).
With ``--all-faces`` every face is estimated (the ``faces`` model): one JSON object per image with keys file,
faces (each with age, age_low, age_high, gender, female_probability, box, detection_score), error and more_faces
(true when the photo holds more faces than the server returns, the most prominent).

Exit codes: 0 when every image was processed, 1 when at least one image failed (its line carries the error),
2 when the server cannot be used at all (unreachable, models not loaded) or the arguments are wrong, 130 on Ctrl-C
(prints ``interrupted``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from client.client import AgeGenderClient
from client.errors import (
    AgeGenderError,
    InferenceTimeoutError,
    InvalidImageError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
)
from client.results import FaceResult, FacesResult
from common.upload import MAX_BYTES

#: The IMAGE that stands for standard input.
STDIN = "-"
EXIT_OK = 0
EXIT_IMAGE_FAILED = 1
EXIT_SERVER = 2


def build_parser() -> argparse.ArgumentParser:
    """Returns the CLI's argument parser."""
    parser = argparse.ArgumentParser(
        prog="agegender",
        description="Estimate age and gender of the face in each image through Triton.",
        epilog="Exit codes: 0 all images processed, 1 some image failed, 2 server unreachable or not ready, "
        "130 interrupted (Ctrl-C).",
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...); - reads one from standard input"
    )
    parser.add_argument(
        "--url", help="Triton host:port (default: $TRITON_URL, else localhost:8001 for grpc / 8000 for http)"
    )
    parser.add_argument(
        "--protocol", choices=("grpc", "http"), help="transport (default: from the --url scheme, else grpc)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per image per line")
    parser.add_argument(
        "--no-detect", action="store_true", help="skip face detection: the images are already aligned face crops"
    )
    parser.add_argument(
        "--all-faces", action="store_true", help="estimate every face in each image, not only the most prominent"
    )
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds per request (default 10)")
    parser.add_argument(
        "--retries", type=int, default=2, metavar="N", help="retries while the server is down (default 2)"
    )
    parser.add_argument("--batch", type=int, default=8, metavar="N", help="images per request (default 8)")
    parser.add_argument("--concurrency", type=int, default=4, metavar="N", help="requests in flight (default 4)")
    return parser


def _print(result: FaceResult | FacesResult, as_json: bool) -> None:
    print(json.dumps(result.to_dict()) if as_json else result.describe(), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code."""
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not valid UTF-8 reaches Python as surrogates: under a strict UTF-8 stdout (a desktop
        # locale, PYTHONIOENCODING=utf-8) its line raised UnicodeEncodeError and the later images' lines were lost.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.all_faces and args.no_detect:
        # Every face needs detection; a crop is one face already (the web page's unticked "Detect face" wins there).
        parser.error("--all-faces finds the faces in a photo and --no-detect says the image is one face: give one")
    if args.images.count(STDIN) > 1:
        parser.error("- (standard input) holds one photo: give it once")
    if STDIN in args.images and (sys.stdin is None or sys.stdin.isatty()):  # None: the shell closed it (<&-)
        parser.error("- reads the photo from standard input: pipe one in (agegender - < photo.jpg)")
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when a caller has its own
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        # Exiting anyway: one more Ctrl-C during the interpreter's shutdown, whose default handler is back by then,
        # would end it as killed by SIGINT instead of with this code.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130


def _on_interrupt(signum, frame) -> None:
    """The first Ctrl-C stops the work: the client closes and "interrupted" is printed. A second one while it closes
    (up to 30 s over gRPC, for requests given up on) ends the process at once, where it used to print a traceback."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    raise KeyboardInterrupt


def _quiet_gevent_interrupts() -> None:
    """tritonclient.http runs on gevent, whose hub prints an interrupt it sees ("KeyboardInterrupt" and a timestamp)
    before passing it on: Ctrl-C over HTTP printed those two lines above "interrupted". Still passed on, unprinted."""
    gevent = sys.modules.get("gevent")
    if gevent is not None:
        hub = gevent.get_hub()
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


def _run(args) -> int:
    try:
        client = AgeGenderClient(
            args.url,
            protocol=args.protocol,
            timeout=args.timeout,
            retries=args.retries,
            max_batch=args.batch,
            concurrency=args.concurrency,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    _quiet_gevent_interrupts()  # the HTTP transport has loaded gevent by now
    stdin, stdin_error = _read_stdin() if STDIN in args.images else (None, None)
    # Bytes carry no name: the photo from standard input gets "-" on its line, and is not sent when it cannot be.
    images = [stdin if image == STDIN else image for image in args.images if image != STDIN or stdin is not None]
    failed = FacesResult.failed if args.all_faces else FaceResult.failed
    with client:
        try:
            if args.all_faces:
                results = all_faces(client, images, concurrency=args.concurrency)
            else:
                results = client.predict_many(images, detect=not args.no_detect)
            if STDIN in args.images:
                k = args.images.index(STDIN)
                if stdin is None:
                    results.insert(k, failed(stdin_error, file=STDIN))
                else:
                    results[k] = dataclasses.replace(results[k], file=STDIN)
        except AgeGenderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if args.json:
                # Still one line per image, so a consumer reading lines never has to special-case this.
                for image in args.images:
                    _print(failed(str(exc), file=image), as_json=True)
            return EXIT_SERVER
        # Before the client closes: closing waits (up to 30 s over gRPC) for requests given up on after a timeout.
        for result in results:
            _print(result, args.json)
    return EXIT_IMAGE_FAILED if any(result.error is not None for result in results) else EXIT_OK


def _read_stdin() -> tuple[bytes | None, str | None]:
    """The photo on standard input, or None and why it cannot be sent. At most the server's upload limit plus one
    byte is read: a larger photo is refused here, unsent, and an endless stream does not fill this process's
    memory."""
    try:
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
    except OSError as err:  # opened for writing only (0>file), or a device that cannot be read
        return None, f"standard input could not be read: {err.strerror or err}"
    if not data:
        return None, "standard input is empty: pipe a photo in (agegender - < photo.jpg)"
    if len(data) > MAX_BYTES:
        return None, f"the photo on standard input is larger than the server accepts ({MAX_BYTES // 2**20} MiB)"
    return data, None


def all_faces(client: AgeGenderClient, images: Sequence[str], *, concurrency: int) -> list[FacesResult]:
    """Every face of every image, ``concurrency`` images in flight; a bad image becomes its own ``error``."""

    def one(image: str) -> FacesResult:
        try:
            return client.predict_faces_result(image)
        except InvalidImageError as exc:  # unreadable here, before any request
            return FacesResult.failed(str(exc).removeprefix(f"{image}: "), file=image)
        except (InferenceTimeoutError, RateLimitedError, RequestTooLargeError, ServerError) as exc:
            # This image's request failed, as predict_many reports it: the other images still get their answers
            # (exit 1). A server that cannot be used at all (unreachable, not ready) still stops the run (exit 2).
            return FacesResult.failed(str(exc), file=image)

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(one, images))


if __name__ == "__main__":
    sys.exit(main())
