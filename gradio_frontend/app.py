"""Gradio front end: upload, webcam or paste a photo, see the estimated age and gender of every face.

By default every face is shown (the ``faces`` model): numbered boxes with labels on the image and a table;
the *All faces* switch goes back to the most prominent face only (the ``age_gender`` ensembles).

The UI is a thin shell over :mod:`client`; every estimate comes from Triton. It never imports
TensorFlow or loads a model, so it starts in seconds (importing gradio is most of it) and runs on any small machine.

This file is the page alone (its components and events, and the sweeping of idle sessions); what an event does is
gradio_frontend/handler.py, and the rest of the package imports without gradio.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import gradio as gr

from client.utils import default_url
from gradio_frontend import uploads
from gradio_frontend.backend import TritonBackend
from gradio_frontend.handler import MSG_PROMPT, Photo, handle
from gradio_frontend.results import TABLE_HEADERS, TABLE_WIDTHS
from gradio_frontend.settings import DEFAULT_PROTOCOL, DEFAULT_TIMEOUT_S, HEALTH_POLL_S

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).parent / "examples"
EXAMPLES = [
    [str(EXAMPLES_DIR / "grace_hopper.jpg"), True],
    [str(EXAMPLES_DIR / "no_face_landscape.jpg"), True],
]


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
    :data:`settings.DEFAULT_TRITON_URL`, for ``protocol``."""
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
        # `change` covers upload, webcam capture, paste and clearing. preprocess=False: see handler.take_photo.
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
