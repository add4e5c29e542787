"""Faces per second through the ``faces`` model beside the single-face path, at a fixed concurrency.

    python -m research.bench_faces --url localhost:8001 [--concurrency 8] [--faces 4] [--seconds 20]

Sends the same ``--faces``-face composite (built from the committed public-domain portrait) in a closed loop
from ``--concurrency`` threads over gRPC, first to ``faces`` (every face), then to the ``age_gender``
ensemble (the single-face path: one face per image), side by side in one run, and prints one JSON line:
requests/s and faces/s of each and their ratio. Start a server first (``python -m serving.runtime.launch``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import threading
import time
from pathlib import Path

from PIL import Image, ImageOps

from client import AgeGenderClient
from common.ports import default_address

PORTRAIT = Path(__file__).resolve().parents[1] / "gradio_frontend" / "examples" / "grace_hopper.jpg"


def composite(faces: int, *, cell: int = 256) -> bytes:
    """A JPEG grid of ``faces`` portraits (alternately mirrored), each face about 95 px wide."""
    portrait = Image.open(PORTRAIT).convert("RGB")
    small = portrait.resize((cell, round(cell * portrait.height / portrait.width)), Image.Resampling.LANCZOS)
    cols = math.ceil(math.sqrt(faces))
    rows = math.ceil(faces / cols)
    gap = cell // 8
    canvas = Image.new("RGB", (cols * (cell + gap) + gap, rows * (small.height + gap) + gap), (200, 205, 210))
    for k in range(faces):
        r, c = divmod(k, cols)
        canvas.paste(
            small if k % 2 == 0 else ImageOps.mirror(small), (gap + c * (cell + gap), gap + r * (small.height + gap))
        )
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def run(call, *, concurrency: int, seconds: float) -> dict:
    """Calls ``call()`` (returning faces found) in a closed loop from ``concurrency`` threads."""
    counts = [[0, 0] for _ in range(concurrency)]
    errors: list[BaseException] = []
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        try:
            while time.perf_counter() < stop:
                counts[k][1] += call()
                counts[k][0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    elapsed = time.perf_counter() - start
    requests, faces = (sum(c[i] for c in counts) for i in (0, 1))
    return {"requests_per_s": requests / elapsed, "faces_per_s": faces / elapsed, "requests": requests}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=default_address("grpc", "localhost"), help="Triton gRPC host:port")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--faces", type=int, default=4, help="faces per composite")
    p.add_argument("--seconds", type=float, default=20.0, help="per path")
    args = p.parse_args(argv)
    image = composite(args.faces)
    with AgeGenderClient(args.url, timeout=120) as client:
        found = len(client.predict_faces(image))
        if found != args.faces:
            print(f"warning: the detector finds {found} of {args.faces} faces in the composite", flush=True)
        client.predict(image)  # warm-up of both paths
        multi = run(lambda: len(client.predict_faces(image)), concurrency=args.concurrency, seconds=args.seconds)
        single = run(lambda: int(client.predict(image).face_found), concurrency=args.concurrency, seconds=args.seconds)
    result = {
        "concurrency": args.concurrency,
        "faces_per_image": found,
        "faces_model": multi,
        "single_face_path": single,
        "faces_per_s_ratio": multi["faces_per_s"] / max(single["faces_per_s"], 1e-9),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
