"""One event of the page: the photo Gradio hands over, sent to Triton, answered as the page's four outputs
(annotated image, status markdown, raw JSON, faces table rows). Gradio-free: the page (app.py) only wires it up."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from client import AgeGenderError, FaceResult, FacesResult
from client.errors import translate
from common import upload
from gradio_frontend import uploads
from gradio_frontend.backend import TritonBackend, error_json, request_failed
from gradio_frontend.drawing import annotate, annotate_faces, load_display_image
from gradio_frontend.results import faces_table, interval_text, summary

log = logging.getLogger(__name__)

MSG_PROMPT = "Upload, paste or take a photo to estimate the age and gender of the face in it."
MSG_NO_FACE = (
    "**No face found** in this image. Try a photo where one face is clearly visible and roughly facing "
    "the camera, or untick *Detect face* if the image is already a tight face crop."
)
MSG_GONE = (
    "**The photo is no longer stored** (uploads are deleted once answered, see docs/privacy.md): upload it again."
)
MSG_FAILED = "**Something went wrong** while handling this photo (the UI's log has the details): try another photo."


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
        return None, message, error_json("invalid_image", str(err)), []

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
        return None, MSG_FAILED, error_json("internal", type(exc).__name__), [], photo
