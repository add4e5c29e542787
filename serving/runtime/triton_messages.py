"""Triton's gRPC message classes (``service_pb2``), without importing tritonclient's gRPC client.

The gate parses a few messages and nothing else, but ``from tritonclient.grpc import service_pb2`` first runs
``tritonclient/grpc/__init__.py``, which imports the whole client with numpy and ml_dtypes: about 0.2 CPU-s of the
gate's start (``python -X importtime``), which on a cold start competes with Triton's stubs for two cores. The
generated modules themselves need only protobuf, so they are imported under a bare stand-in for the package, which
is removed again: a later ``import tritonclient.grpc`` (nothing in the gate does one) still runs the real package
and finds the same message modules.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import tritonclient  # a plain folder package: imports nothing

PACKAGE = "tritonclient.grpc"


def _load():
    if PACKAGE in sys.modules:  # the real package is already imported: nothing to save
        return importlib.import_module(f"{PACKAGE}.service_pb2")
    stand_in = types.ModuleType(PACKAGE)
    stand_in.__path__ = [str(Path(tritonclient.__file__).parent / "grpc")]
    sys.modules[PACKAGE] = stand_in
    try:
        return importlib.import_module(f"{PACKAGE}.service_pb2")
    finally:
        del sys.modules[PACKAGE]


service_pb2 = _load()
