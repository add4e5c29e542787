"""Gradio web UI for the age and gender service; talks to Triton only through :mod:`client`.

``build_app`` is imported on first use, not here: ``python -m gradio_frontend`` must set up the private
upload folder (gradio_frontend/uploads.py) before anything imports gradio.
"""

from common.grpc_fork import disable_grpc_fork_handlers

# Before the page imports gRPC: `--serve-triton` starts the server's children from this process.
disable_grpc_fork_handlers()

__all__ = ["build_app"]


def __getattr__(name: str):
    if name == "build_app":
        from gradio_frontend.app import build_app

        return build_app
    raise AttributeError(f"module 'gradio_frontend' has no attribute {name!r}")
