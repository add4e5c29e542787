"""Serving: code that runs inside Triton (``pipeline``), the local server runtime (``runtime``), ops tools (``ops``)."""
