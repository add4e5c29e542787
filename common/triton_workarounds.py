"""Workarounds for the local Triton (2.51, the binary in the nvidia-pytriton wheel), each explained once, here.

When the pinned local binary moves on, delete an entry and follow its references (grep for its name).
Production pins the 25.02 image, which needs none of them unless an entry says so.
"""

from __future__ import annotations

#: Triton 2.51 can segfault when an in-flight gRPC request to an ensemble is cancelled, by a deadline, a closed
#: channel or a raw HTTP/2 stream reset (triton-inference-server/server#7368; fixed by PR #7840, in 25.01 and later).
#: Locally no cancel reaches Triton: the gate between the door and Triton (serving/runtime/gate.py) makes its call to
#: Triton in a task of its own, without a deadline, which the caller's cancel does not touch; the answer is dropped
#: at the gate (measured: 50 cancels in 10 s, 0 crashes, tests/test_gate.py; without the gate the same flood crashed
#: 2.51). Our own callers are polite anyway, for deployments without the gate: the client stops *waiting* on its own
#: clock and sends only a distant backstop deadline, max(GRPC_BACKSTOP_MIN_S, GRPC_BACKSTOP_FACTOR x its timeout),
#: and closes its channel only after abandoned requests finish; load generators send none and bound runs by
#: duration; the door strips ``grpc-timeout`` (serving/runtime/door.py ``STRIP_GRPC_DEADLINE``). The launcher's
#: restart of a crashed Triton (serving/runtime/server.py) stays as a second line of defence.
GRPC_BACKSTOP_MIN_S = 300.0
GRPC_BACKSTOP_FACTOR = 10.0
