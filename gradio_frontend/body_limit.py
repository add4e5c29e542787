"""A cap on the body of every request to the web UI except its file uploads, which Gradio bounds itself.

Gradio's ``max_file_size`` bounds a file sent to its upload route. A photo pasted or taken with the webcam comes
inline instead, as a base64 data URL inside the JSON of the event, and nothing bounded that: a 200 MB data URL took
the UI from 205 MB to 1.25 GB before the app could refuse it, and four at once left 2.35 GB held (the red-team
probe of 2026-12-07). This ASGI middleware answers 413 to a body over :data:`MAX_BODY_BYTES`, from its declared
length when there is one, else as it arrives, before Gradio parses any of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from common import upload

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: The largest photo the server takes (common/upload.py MAX_BYTES) as base64, with 2 MiB for the rest of the event.
MAX_BODY_BYTES = 4 * math.ceil(upload.MAX_BYTES / 3) + 2 * 2**20
#: Gradio's file-upload route: it streams the file to disk and stops at ``max_file_size`` itself.
UPLOAD_ROUTE = "/upload"


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuses any request body over ``max_bytes`` with 413, except on Gradio's upload route."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].endswith(UPLOAD_ROUTE):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if started:  # the app answered before reading all of the body: nothing left to say
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        limit = self.max_bytes / 2**20
        body = json.dumps({"error": f"The request is larger than {limit:.0f} MiB; send a smaller photo."}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
