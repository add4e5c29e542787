"""Gradio front end: upload, webcam or paste a photo, see the estimated age and gender of every face.

By default every face is shown (the ``faces`` model): numbered boxes with labels on the image and a table;
the *All faces* switch goes back to the most prominent face only (the ``age_gender`` ensembles).

The UI is a thin shell over :mod:`client`; every estimate comes from Triton. It never imports
TensorFlow or loads a model, so it starts in a second and runs on any small machine.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw, ImageFont

from client import (
    AgeGenderClient,
    AgeGenderError,
    DetectedFace,
    FaceResult,
    FacesResult,
    InvalidImageError,
    ServerUnavailableError,
)
from client.errors import InferenceTimeoutError, ModelNotReadyError, RateLimitedError, translate
from client.utils import default_url
from common import upload
from gradio_frontend import uploads
from gradio_frontend.labels import place_labels

log = logging.getLogger(__name__)

DEFAULT_PROTOCOL = os.environ.get("TRITON_PROTOCOL", "grpc")
# As the client and the CLI choose it: $TRITON_URL, else localhost on $TRITON_GRPC_PORT / $TRITON_HTTP_PORT. None
# where such a port is not a number: build_app and the command line then say which variable, not this import.
try:
    DEFAULT_TRITON_URL: str | None = default_url("http" if DEFAULT_PROTOCOL == "http" else "grpc")
except ValueError:
    DEFAULT_TRITON_URL = None


# Short: a user waiting on a spinner for a dead server is worse than a clear message now.
def _seconds(name: str, default: str) -> float:
    """A number of seconds from the environment; a value that is not one stops the start with one line."""
    value = os.environ.get(name, default)
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"error: {name}={value!r} is not a number of seconds") from None


DEFAULT_TIMEOUT_S = _seconds("TRITON_TIMEOUT", "15")

HEALTH_POLL_S = _seconds("GRADIO_HEALTH_POLL", "15")

#: The longest side of the picture the page shows and draws on; a phone photo's 4,000 px only slow the page down.
#: JPEGs are decoded at a reduced scale as the server decodes them (upload.DRAFT_SIDE), so a photo's longer side
#: shows at 1280-2048 px (a 6000x4000 one at 1500).
DISPLAY_SIDE = 2048
EXAMPLES_DIR = Path(__file__).parent / "examples"
EXAMPLES = [
    [str(EXAMPLES_DIR / "grace_hopper.jpg"), True],
    [str(EXAMPLES_DIR / "no_face_landscape.jpg"), True],
]

MSG_PROMPT = "Upload, paste or take a photo to estimate the age and gender of the face in it."
MSG_NO_FACE = (
    "**No face found** in this image. Try a photo where one face is clearly visible and roughly facing "
    "the camera, or untick *Detect face* if the image is already a tight face crop."
)
MSG_GONE = (
    "**The photo is no longer stored** (uploads are deleted once answered, see docs/privacy.md): upload it again."
)
MSG_FAILED = "**Something went wrong** while handling this photo (the UI's log has the details): try another photo."
BOX_COLOUR = (255, 64, 64)
#: Columns of the faces table (all-faces mode); "#" is the number drawn on the face's box.
TABLE_HEADERS = ["#", "age", "80% interval", "gender", "confidence", "detector score", "box (x0, y0, x1, y1)"]
#: Wide enough for each header on one line in the table's bold font, with room to spare (fits a 1024 px page).
TABLE_WIDTHS = ["56px", "80px", "150px", "100px", "130px", "170px", "240px"]
#: Between the interval's ends on the page; the image labels use "-" (PIL's default font has no en dash glyph).
DASH = "\u2013"


class TritonBackend:
    """The UI's one :class:`AgeGenderClient`, created on first use so the UI can start before Triton does.

    Gradio's worker threads share it: the client is thread-safe (one gRPC channel, or over HTTP at most 32 lane
    threads with a client each) and reconnects quickly after an outage. Its retries with backoff carry a click
    across a restart of Triton by the launcher (ready again within its cold start, a few seconds).
    """

    #: Attempts after the first while the server is unavailable: backoff 0.5 + 1 + 2 + 4 s covers a restart.
    RETRIES = 4

    def __init__(self, url: str, protocol: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self._lock = threading.Lock()
        self._shared: AgeGenderClient | None = None

    def client(self) -> AgeGenderClient:
        with self._lock:
            if self._shared is None:
                self._shared = AgeGenderClient(
                    self.url, protocol=self.protocol, timeout=self.timeout, retries=self.RETRIES
                )
            return self._shared

    def close(self) -> None:
        with self._lock:
            client, self._shared = self._shared, None
        if client is not None:
            client.close()

    def predict(self, image: str | bytes | Image.Image, *, detect: bool) -> FaceResult:
        return self.client().predict(image, detect=detect)

    def predict_faces(self, image: str | bytes | Image.Image) -> FacesResult:
        """Every face (the ``faces`` model); a refused image comes back as ``error``."""
        return self.client().predict_faces_result(image)

    def health_markdown(self) -> str:
        where = f"`{self.url}` ({self.protocol})"
        try:
            health = self.client().health()  # never retries: the status line shows what is true now
        except AgeGenderError as err:
            return f"Triton at {where}: **unreachable** ({for_the_page(str(err))})"
        if getattr(health, "ok", False):
            return f"Triton at {where}: **ready**"
        if getattr(health, "live", False):
            return f"Triton at {where}: **starting**, models still loading"
        error = getattr(health, "error", None)
        return f"Triton at {where}: **unreachable**" + (f" ({for_the_page(error)})" if error else "")


@dataclass(frozen=True)
class Photo:
    """One photo as the user gave it: the original bytes, and where Gradio had stored them (``key``)."""

    data: bytes
    name: str
    key: str | None = None
    #: Why it is refused before it was even decoded from the page's data URL (too large), else None.
    refused: str | None = None


def take_photo(payload: dict[str, Any] | None, kept: Photo | None) -> Photo | None:
    """Reads the photo Gradio hands over (its unprocessed FileData) and deletes Gradio's copy.

    Gradio's own preprocessing is skipped on purpose: it opens the file with PIL before our code runs, so
    a file that is no image failed with bare "Error" badges instead of this app's message. The bytes stay in
    the session (``kept``, a ``gr.State`` that expires) so *Estimate* can run again on the same photo.

    Another session that uploaded the same bytes under the same name has the same path (Gradio names the folder by
    the bytes' hash): once the first is answered, the file is gone and the second is answered from the bytes
    uploads.py holds for a minute after deleting them.

    Raises:
        FileNotFoundError: Gradio's copy is gone and the session holds no other copy (a stale page).
    """
    if not payload:
        return None
    path, url = payload.get("path"), payload.get("url") or ""
    name = payload.get("orig_name") or (Path(path).name if path else "image")
    if path and (data := uploads.take(path)) is not None:
        return Photo(data, name, key=path)  # answered from memory from now on; nothing personal stays on disk
    if path and kept is not None and kept.key == path:  # an inline photo has no path: it is always the new one
        return kept
    if path and (data := uploads.held(path)) is not None:
        return Photo(data, name, key=path)
    if url.startswith("data:"):  # a webcam or pasted image sent inline
        encoded = url.partition(",")[2]
        size = len(encoded) // 4 * 3 - encoded[-2:].count("=")  # what it decodes to, before decoding it
        if (why := upload.too_large(size)) is not None:
            return Photo(b"", name, refused=why)
        try:
            return Photo(base64.b64decode(encoded, validate=True), name)
        except (binascii.Error, ValueError) as err:
            return Photo(f"not base64 ({err})".encode(), name)  # undecodable: rejected like any bad file
    raise FileNotFoundError(path)


def gender_confidence(result: FaceResult | DetectedFace) -> float | None:
    """Probability of the gender that is shown, so "male (90%)" reads naturally."""
    p = result.female_probability
    if p is None or result.gender is None:
        return None
    return p if result.gender == "female" else 1.0 - p


def interval_text(result: FaceResult | DetectedFace, *, dash: str = DASH) -> str | None:
    """The age model's 80% interval in whole years, e.g. ``27–41``; None when the model gives none."""
    interval = result.age_interval
    return None if interval is None else f"{round(interval[0])}{dash}{round(interval[1])}"


def summary(result: FaceResult | DetectedFace, *, dash: str = DASH) -> str:
    """The one-line label, e.g. ``age ~34 (27–41), female (87%)``: the interval only when the model gives one."""
    if not result.estimated:
        return "too small to estimate"  # the server found it and sent no numbers (docs/serving.md, face detection)
    parts = [f"age ~{round(result.age)}" if result.age is not None else "age ?"]
    if result.age is not None and (interval := interval_text(result, dash=dash)) is not None:
        parts[0] += f" ({interval})"
    conf = gender_confidence(result)
    if result.gender is not None:
        parts.append(f"{result.gender} ({conf:.0%})" if conf is not None else result.gender)
    return ", ".join(parts)


def load_display_image(data: bytes) -> tuple[Image.Image, float]:
    """The upload as the server's decoder sees it (bounded, upright, RGB: common/upload.py), at most
    :data:`DISPLAY_SIDE` on its longer side; returns it with the factor that maps its pixels to the file's (the
    boxes' coordinates).

    Raises:
        upload.ImageDecodeError: For what the server refuses too: size, format, pixels and decoded bytes from the
            header, before any pixel is decoded here; a truncated or corrupt file once decoded.
    """
    # Drafted as the server drafts (a JPEG over DRAFT_SIDE decoded at a reduced scale): drafted to DISPLAY_SIDE, a
    # 4000x3000 photo could not be halved (2000 < 2048) and took 285 ms to decode in full instead of 55.
    opened, stored = upload.open_bounded(data, draft_side=upload.DRAFT_SIDE)
    img = upload.load_rgb(opened, data)  # may be `opened` itself, so it stays open (its bytes are in memory)
    scale = upload.upright_size(opened, stored)[0] / img.width
    if max(img.size) > DISPLAY_SIDE:
        factor = DISPLAY_SIDE / max(img.size)
        img = img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), Image.BILINEAR)
        scale /= factor
    return img, scale


def _shown(box, scale: float) -> tuple[float, ...]:
    """A box in the file's pixels, on the picture shown (``scale``: from :func:`load_display_image`)."""
    return tuple(float(v) / scale for v in box)


def annotate(image: Image.Image, result: FaceResult, scale: float = 1.0) -> Image.Image:
    """Draws the face box and the summary label onto a copy of ``image`` (shown ``scale`` times smaller than the file
    the box refers to)."""
    out = image.copy()
    if not result.face_found:
        return out
    width, height = out.size
    box = _shown(result.box, scale) if result.box else (0.0, 0.0, float(width), float(height))
    _draw_box(out, box, summary(result, dash="-"))
    return out


def annotate_faces(
    image: Image.Image, faces: list[DetectedFace] | tuple[DetectedFace, ...], scale: float = 1.0
) -> Image.Image:
    """Draws every face's box with its number on a copy; the details are in the table, on the row of that number.
    ``scale``: the picture is shown that many times smaller than the file the boxes refer to.

    Numbers instead of text labels: a crowd's labels would cover each other and the faces. Each number sits
    on its box's corner where it collides with no other number (gradio_frontend/labels.py).
    """
    out = image.copy()
    draw = ImageDraw.Draw(out)
    width, height = out.size
    boxes = [_shown(face.box, scale) for face in faces]
    fonts, sizes = [], []
    for k, (x0, _, x1, _) in enumerate(boxes, 1):
        # Scales with its face within readable limits, so small faces in a crowd get small markers.
        font = ImageFont.load_default(size=max(14, min(round(min(width, height) / 10), round((x1 - x0) / 2.5))))
        left, top, right, bottom = draw.textbbox((0, 0), str(k), font=font)
        pad = max(2, (bottom - top) // 4)
        fonts.append((font, left, top, pad))
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
    for x0, y0, x1, y1 in boxes:
        line = max(2, min(round(min(width, height) / 150), round((x1 - x0) / 30)))
        draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
    for k, ((font, left, top, pad), (tx, ty, tx1, ty1)) in enumerate(
        zip(fonts, place_labels(boxes, sizes, (width, height)), strict=True), 1
    ):
        draw.rectangle((tx, ty, tx1, ty1), fill=BOX_COLOUR)
        draw.text((tx + pad - left, ty + pad - top), str(k), fill=(255, 255, 255), font=font)
    return out


def _draw_box(out: Image.Image, box, label: str) -> None:
    draw = ImageDraw.Draw(out)
    width, height = out.size
    x0, y0, x1, y1 = (float(v) for v in box)
    line = max(2, round(min(width, height) / 150))
    font = ImageFont.load_default(size=max(14, round(min(width, height) / 22)))
    draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    text_w, text_h = right - left, bottom - top
    pad = max(2, text_h // 4)
    # Label above the box when it fits, else inside its top edge.
    ty = y0 - text_h - 2 * pad if y0 - text_h - 2 * pad >= 0 else y0
    tx = min(max(0.0, x0), max(0.0, width - text_w - 2 * pad))
    draw.rectangle((tx, ty, tx + text_w + 2 * pad, ty + text_h + 2 * pad), fill=BOX_COLOUR)
    draw.text((tx + pad - left, ty + pad - top), label, fill=(255, 255, 255), font=font)


def faces_table(faces: list[DetectedFace] | tuple[DetectedFace, ...]) -> list[list[Any]]:
    """One row per face, numbered as on the image."""
    rows = []
    for k, face in enumerate(faces, 1):
        conf = gender_confidence(face)
        rows.append(
            [
                k,
                round(face.age, 1) if face.age is not None else None,
                interval_text(face),
                face.gender,
                f"{conf:.0%}" if conf is not None else None,
                round(face.detection_score, 2),
                ", ".join(f"{v:.0f}" for v in face.box),
            ]
        )
    return rows


def _error_json(kind: str, message: str) -> dict[str, Any]:
    return {"error": message, "error_kind": kind}


def analyse(
    backend: TritonBackend, photo: Photo | None, detect: bool, all_faces: bool = False
) -> tuple[Image.Image | None, str, Any, list[list[Any]]]:
    """Runs one image through Triton; returns (annotated image, status markdown, raw JSON, faces table rows)."""
    if photo is None:
        return None, MSG_PROMPT, None, []
    try:
        if photo.refused is not None:
            raise upload.ImageDecodeError(photo.refused)
        display, scale = load_display_image(photo.data)
    except upload.ImageDecodeError as err:  # what the server would refuse too; bounded before any decoding
        message = f"**The image was rejected**: {photo.name}: {err}"  # each message says what is wrong, and the fix
        return None, message, _error_json("invalid_image", str(err)), []

    try:
        # The original bytes, not a re-encode: the server sees exactly what the user uploaded.
        data = photo.data
        result = backend.predict_faces(data) if all_faces and detect else backend.predict(data, detect=detect)
    except AgeGenderError as err:
        return display, *request_failed(backend, err), []
    except Exception as exc:  # noqa: BLE001 - mapped as the client maps its own: a socket error is "unreachable"
        log.warning("the client let an error through untranslated", exc_info=True)
        return display, *request_failed(backend, translate(exc, url=backend.url, protocol=backend.protocol)), []

    payload = result.to_dict()
    payload["file"] = photo.name
    if isinstance(result, FaceResult) and not result.estimated:
        return annotate(display, result, scale), f"**Face found, too small to estimate**: {result.error}", payload, []
    if result.error is not None:
        return display, f"**The image was rejected**: {result.error}", payload, []
    if isinstance(result, FacesResult):
        if not result.faces:
            return display, MSG_NO_FACE, payload, []
        count = len(result.faces)
        more = " (the most prominent; the photo holds more)" if result.more_faces else ""
        lines = [f"**{count} face{'s' if count > 1 else ''} found**{more}"]
        lines += [f"#{k}: {summary(face)}" for k, face in enumerate(result.faces, 1)]
        return annotate_faces(display, result.faces, scale), "  \n".join(lines), payload, faces_table(result.faces)
    if not result.face_found:
        return display, MSG_NO_FACE, payload, []
    status = f"**{summary(result)}**"
    if (interval := interval_text(result)) is not None:
        # Says what the bracket is: the spread of the model's own age distribution, not a measured error bar.
        status += f"  \n80% interval of the model's age estimate: {interval} years"
    if result.detection_score is not None and detect:
        status += f"  \nface detector confidence {result.detection_score:.0%}"
    return annotate(display, result, scale), status, payload, []


def for_the_page(message: str) -> str:
    """The client's advice in the page's terms: the CLI's --url is the page's --triton-url (set where it starts)."""
    return message.replace("pass --url / set TRITON_URL", "start this page with --triton-url / TRITON_URL")


def request_failed(backend: TritonBackend, err: AgeGenderError) -> tuple[str, dict[str, Any]]:
    """The status markdown and raw JSON for a request the client could not complete."""
    where = f"`{backend.url}` ({backend.protocol})"
    if isinstance(err, InvalidImageError):
        return f"**The image was rejected**: {err}", _error_json("invalid_image", str(err))
    if isinstance(err, ModelNotReadyError):
        message = (
            f"**Triton is starting**: it answers at {where} but the models are not ready yet. "
            "Try again in a few seconds."
        )
        return message, _error_json("model_not_ready", str(err))
    if isinstance(err, ServerUnavailableError):
        message = (
            f"**Triton server is unreachable** at {where}: it is down or still starting. "
            "This page keeps working; press *Estimate* again once the server is up."
        )
        if err.restarting:  # the door says so while the launcher restarts Triton
            message = (
                f"**Triton is restarting** at {where} after a crash. "
                "This page keeps working; press *Estimate* again in a few seconds."
            )
        elif err.busy:  # the gate holds all the uploads it may at once
            message = (
                f"**Triton is busy** at {where}: it is receiving as many uploads as it holds at once. "
                "This page keeps working; press *Estimate* again in a moment."
            )
        return message, _error_json("server_unavailable", for_the_page(str(err)))
    if isinstance(err, InferenceTimeoutError):
        message = f"**Triton did not answer in time** ({backend.timeout:g} s) at {where}. It may be overloaded."
        return message, _error_json("timeout", str(err))
    if isinstance(err, RateLimitedError):
        message = f"**Too many requests** from this address at {where}. Wait a moment and press *Estimate* again."
        return message, _error_json("rate_limited", str(err))
    return f"**The request failed**: {err}", _error_json(type(err).__name__, str(err))


def handle(
    backend: TritonBackend, payload: dict[str, Any] | None, detect: bool, all_faces: bool, kept: Photo | None
) -> tuple[Image.Image | None, str, Any, list[list[Any]], Photo | None]:
    """One event of the page: the photo Gradio hands over, analysed; returns :func:`analyse`'s four outputs and the
    photo the session keeps.

    Never raises: Gradio would show a bare "Error" badge, and the session would lose the photo whose file
    :func:`take_photo` has already deleted (the next *Estimate* then said "no longer stored"). A failure nobody
    foresaw gets :data:`MSG_FAILED`, and the session keeps the photo for the next try.
    """
    try:
        photo = take_photo(payload, kept)
    except FileNotFoundError:
        return None, MSG_GONE, None, [], None
    try:
        return *analyse(backend, photo, detect, all_faces), photo
    except Exception as exc:  # noqa: BLE001 - logged; the page shows a status instead of a bare "Error"
        log.exception("handling a photo failed")
        # The exception's type only: its message may name the machine's paths; the log has the rest.
        return None, MSG_FAILED, _error_json("internal", type(exc).__name__), [], photo


def _table(rows: list[list[Any]]) -> dict[str, Any]:
    return {"headers": TABLE_HEADERS, "data": rows}


def _cached_files(samples: list[list[Any]]) -> list[str]:
    """Where Gradio copied the examples' files when it built the examples table (their FileData in the samples):
    the very files a click on an example hands to :func:`run`."""
    return [value["path"] for row in samples for value in row if isinstance(value, dict) and value.get("path")]


def build_app(
    triton_url: str | None = None, protocol: str = DEFAULT_PROTOCOL, *, timeout: float = DEFAULT_TIMEOUT_S
) -> gr.Blocks:
    """Builds the Blocks app; nothing connects to Triton until the first request. ``triton_url``: default as
    :data:`DEFAULT_TRITON_URL`, for ``protocol``."""
    backend = TritonBackend(triton_url or default_url(protocol), protocol, timeout=timeout)

    def run(payload: dict[str, Any] | None, detect: bool, all_faces: bool, kept: Photo | None):
        image, status, raw, rows, photo = handle(backend, payload, detect, all_faces, kept)
        # The table only when it has rows: single-face mode and errors leave nothing empty on the page.
        return image, status, raw, gr.Dataframe(value=_table(rows), visible=bool(rows)), photo

    # Gradio's analytics (on by default) would tell its makers' server about every start of the UI and check for a
    # newer version there: this page sends nothing anywhere but to Triton.
    with gr.Blocks(title="Age & gender estimation", analytics_enabled=False) as demo:
        gr.Markdown("# Age & gender estimation\nServed by NVIDIA Triton Inference Server.")
        server_status = gr.Markdown(elem_id="server-status")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="Photo",
                    sources=["upload", "webcam", "clipboard"],
                    # filepath + image_mode=None hands over the upload untouched (no re-encode, EXIF intact).
                    type="filepath",
                    image_mode=None,
                    format="png",
                    elem_id="input-image",
                )
                detect = gr.Checkbox(
                    value=True, label="Detect face (untick for an already-cropped face)", elem_id="detect"
                )
                all_faces = gr.Checkbox(
                    value=True, label="All faces (untick for the most prominent face only)", elem_id="all-faces"
                )
                with gr.Row():
                    submit = gr.Button("Estimate", variant="primary", elem_id="estimate")
                    refresh = gr.Button("Check server", elem_id="check-server")
            with gr.Column():
                annotated = gr.Image(label="Result", type="pil", interactive=False, elem_id="annotated")
                status = gr.Markdown(MSG_PROMPT, elem_id="status")
                raw = gr.JSON(label="Raw result", elem_id="raw-json")
        # Full width: at half the page the columns would squeeze their headers. Shown only when it has rows.
        table = gr.Dataframe(
            headers=TABLE_HEADERS,
            label="Faces (numbered as on the image)",
            interactive=False,
            elem_id="faces-table",
            wrap=False,
            column_widths=TABLE_WIDTHS,
            visible=False,
        )
        examples = gr.Examples(
            examples=EXAMPLES,
            inputs=[image, detect],
            # No fn/run_on_click: filling the image fires its `change` event below, which runs the
            # request; a second run here would send every example twice. No caching either: it
            # would call Triton at start-up, and the UI must start without it.
            cache_examples=False,
            label="Examples (public domain / generated)",
        )
        for path in _cached_files(examples.dataset.samples):
            uploads.mark_public(path)  # public images: their cached copies stay for the next click
        # The last photo's bytes for *Estimate* again; dropped a minute after its last use or with the tab.
        kept = gr.State(None, time_to_live=uploads.MAX_AGE_S)
        outputs = [annotated, status, raw, table, kept]
        inputs = [image, detect, all_faces, kept]
        # `change` covers upload, webcam capture, paste and clearing. preprocess=False: see take_photo.
        image.change(run, inputs, outputs, preprocess=False)
        submit.click(run, inputs, outputs, preprocess=False)
        # No spinner on the status line: a health probe takes milliseconds or fails fast.
        refresh.click(backend.health_markdown, None, server_status, show_progress="hidden")
        demo.load(backend.health_markdown, None, server_status, show_progress="hidden")
        # Re-probing keeps the status line truthful when Triton goes away or comes back while the page is open.
        gr.Timer(HEALTH_POLL_S).tick(backend.health_markdown, None, server_status, show_progress="hidden")
    demo.queue(default_concurrency_limit=8)
    threading.Thread(target=_session_sweeper, args=(weakref.ref(demo),), name="session-sweeper", daemon=True).start()
    return demo


def forget_sessions(demo: gr.Blocks, max_idle_s: float = uploads.MAX_AGE_S) -> int:
    """Drops, from the UI process's memory, every session closed or idle for ``max_idle_s``; returns how many.

    Gradio keeps each session's page on the server (the upload's file name, the answer shown, the raw JSON) until
    10,000 other sessions push it out, and a closed tab's ``gr.State`` (the photo's bytes) for an hour; here both go
    within :data:`uploads.SWEEP_EVERY_S` of the tab closing or of a minute without events (an open page's health
    poll keeps its own session alive). A session that comes back starts afresh, as after a reload.
    """
    holder = getattr(demo, "state_holder", None)  # set when the app is launched
    if holder is None:
        return 0
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=max_idle_s)
    dropped = 0
    for session in list(holder.session_data):
        state, last = holder.session_data.get(session), holder.time_last_used.get(session)
        if state is None or not (state.is_closed or last is None or last < cutoff):
            continue
        holder.delete_state(session)  # the State components' own delete callbacks
        with holder.lock:
            holder.session_data.pop(session, None)
            holder.time_last_used.pop(session, None)
        dropped += 1
    return dropped


def _session_sweeper(demo_ref: weakref.ref) -> None:
    while (demo := demo_ref()) is not None:
        try:
            forget_sessions(demo)
        except Exception:  # noqa: BLE001 - a Gradio internals change must not stop the UI; the log says so
            log.warning("forgetting idle sessions failed", exc_info=True)
        del demo
        time.sleep(uploads.SWEEP_EVERY_S)
