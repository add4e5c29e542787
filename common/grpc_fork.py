"""gRPC's fork handlers off in our processes that import gRPC and start child processes.

With them on, a child forked to run another program (``subprocess`` with a ``preexec_fn``, as
serving/runtime/children.py starts Triton, nginx and the gate) restarts gRPC's poller thread between fork and exec,
and that thread meets the epoll descriptor that ``close_fds`` has just closed: 1 child in 60 to 1 in 100 died
before its exec (SIGSEGV, or "epoll_wait error: Bad file descriptor" and no program; 8 and 10 of 600, 3 of 400,
measured with grpcio 1.85 here, 2026-12-06; grpc/grpc#43055, open since 1.81), none of 900 with this setting; and one
child in a later run of that measurement hung there instead, never reaching its program. A test run lost a gate start
to it.
No process of ours uses gRPC in a forked child that does not exec, which is all fork support is for.

gRPC reads the variable once, when it is first imported, so each entry point calls this before anything imports
gRPC (a package's ``__init__`` runs before the imports of its modules). An operator's own setting wins.
"""

from __future__ import annotations

import os

ENV = "GRPC_ENABLE_FORK_SUPPORT"


def disable_grpc_fork_handlers() -> None:
    os.environ.setdefault(ENV, "false")
