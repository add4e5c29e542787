"""Gradio web UI for the age and gender service; talks to Triton only through :mod:`client`."""

from gradio_frontend.app import build_app

__all__ = ["build_app"]
