"""Workarounds for the local Triton (2.51, the binary in the nvidia-pytriton wheel), each explained once, here.

When the pinned local binary moves on, delete an entry and follow its references (grep for its name).
Production pins the 25.02 image, which needs none of them unless an entry says so.
"""

from __future__ import annotations

#: Triton 2.51 can segfault when an in-flight gRPC request to an ensemble is cancelled, by a deadline or by a
#: closed channel (triton-inference-server/server#7368; fixed by PR #7840, in 25.01 and later). So no gRPC
#: caller of ours lets gRPC cancel an inference: the client stops *waiting* on its own clock and sends only a
#: distant backstop deadline, max(GRPC_BACKSTOP_MIN_S, GRPC_BACKSTOP_FACTOR x its timeout), and closes its
#: channel only after abandoned requests finish; load generators send none and bound runs by duration; the
#: front door strips ``grpc-timeout`` (serving/runtime/door.py ``STRIP_GRPC_DEADLINE``); and since a caller's own
#: cancellation still reaches Triton, the launcher restarts a crashed Triton (serving/runtime/launch.py).
GRPC_BACKSTOP_MIN_S = 300.0
GRPC_BACKSTOP_FACTOR = 10.0
