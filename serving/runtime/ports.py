"""The launcher's ports: defaults from the environment, free ports for tests and tools, and the in-use check.

The public ports default to env TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT, else 8000 / 8001 / 8002.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from common import pids
from common.ports import DEFAULT_PORTS, PortInUseError, check_free, env_name, env_port, in_use

# The check itself lives in common/ (the web UI has no serving/).
__all__ = [
    "DEFAULT_PORTS",
    "Held",
    "PortInUseError",
    "check_free",
    "env_name",
    "env_port",
    "free_port",
    "hold_for",
    "in_use",
]
#: How far below the kernel's ephemeral range free_port() looks.
PORT_SPAN = 10_000
#: Ports handed out by free_port() in this process: never handed out twice (a server's public port, chosen
#: before it starts, is not bound yet when its internal ports are chosen).
_handed_out: set[int] = set()
#: Cross-process reservations: a test session and the launchers it spawns each pick ports, and a port picked by
#: one but not bound yet looks free to the others (seen in make test: a launcher's internal port taken by the
#: session's next server). One empty file per port, named PORT.PID; a reservation lapses when its process exits.
#: The folder is this user's alone (made 0700, checked before each use: _folder()): in one that another local user
#: can write to, or made first, a PORT.PID link planted there would have root create a file wherever it points.
RESERVATIONS = Path(os.environ.get("TMPDIR", "/tmp")) / f"agegender-ports-{os.geteuid()}"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_swept = False


def _sweep() -> None:
    """Removes the reservations of processes that are gone, once per process: each lapses by itself when its port
    comes up again, but in a long test session the folder would otherwise keep one file per port ever used."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        with _folder() as folder:
            for name in os.listdir(folder):
                held = _parse(name)
                if held is not None and not pids.alive(held[1]):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=folder)
    except OSError:
        pass


def _reserve(port: int) -> bool:
    """Whether ``port`` is now reserved for this process (False: a live process holds it)."""
    try:
        with _folder() as folder:
            for name in os.listdir(folder):
                held = _parse(name)
                if held is None or held[0] != port:
                    continue
                if held[1] != os.getpid() and pids.alive(held[1]):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=folder)
            _mark(folder, f"{port}.{os.getpid()}")
    except OSError:
        pass  # best effort: an unwritable or unsafe temp folder leaves the in-process check alone
    return True


def hold_for(pid: int, *ports: int) -> None:
    """Reserves, for the child ``pid`` that binds them, the ``ports`` this process handed out (free_port()).

    A reservation otherwise lapses with the process that chose the port, while the child it started may bind it
    only later (Triton opens its ports once its models have loaded) or hold it after the parent is gone: a launcher
    killed mid-start leaves that child running until the reaper stops it, and another process's free_port() must
    not hand the port out meanwhile. Ports this process did not hand out (a fixed 8000, or one its parent chose and
    still holds) are left alone. Best effort, like the reservations themselves."""
    held = [port for port in ports if port in _handed_out]
    if not held:
        return
    try:
        with _folder() as folder:
            for port in held:
                _mark(folder, f"{port}.{pid}")
    except OSError:
        pass


#: The unsafe reservation folders this process has already named on stderr: once each is enough.
_refused: set[Path] = set()


@contextlib.contextmanager
def _folder() -> Iterator[int]:
    """The reservations folder, opened, and made 0700 first if missing. Raises OSError, said once on stderr, when it
    is not this user's alone: another user could have planted links there under the names this process creates.
    Not an error the launcher stops for: any local user can make the folder first, and would then stop it."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(RESERVATIONS, 0o700)
    problem = _unsafe(os.lstat(RESERVATIONS))  # lstat: a link in its place is refused, not followed
    if problem is None:
        fd = os.open(RESERVATIONS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        problem = _unsafe(os.fstat(fd))  # what was opened: the name may have been swapped since the lstat
        if problem is None:
            try:
                yield fd  # everything after goes through fd, the folder just checked, not through its name
            finally:
                os.close(fd)
            return
        os.close(fd)
    message = (
        f"port reservations: not using {RESERVATIONS}: it {problem}; ports are reserved against this process only"
        " until it is removed (it is made again, 0700) or TMPDIR names another folder"
    )
    if RESERVATIONS not in _refused:
        _refused.add(RESERVATIONS)
        print(message, file=sys.stderr, flush=True)
    raise OSError(message)


def _unsafe(st: os.stat_result) -> str | None:
    """What makes a reservation folder unsafe to create files in, or None: it must be a directory, not a link, of
    this user's, that no other user can write to."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"is owned by uid {st.st_uid}, not by this process's uid {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"can be written by its group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _parse(name: str) -> tuple[int, int] | None:
    """The port and process of a reservation's name, PORT.PID, or None for any other name."""
    port, _, pid = name.partition(".")
    return (int(port), int(pid)) if port.isdecimal() and pid.isdecimal() else None


def _mark(folder: int, name: str) -> None:
    """Creates the empty file ``name`` in ``folder``, never through a link there: O_EXCL fails on any name already
    taken, a link included, and O_NOFOLLOW says so again. The name alone is the reservation: one already there is."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with contextlib.suppress(FileExistsError):
        os.close(os.open(name, flags, 0o600, dir_fd=folder))


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket | None:
    """A socket bound to ``host:port`` (SO_REUSEPORT set first if asked), or None if the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    return sock


def _choose(host: str, *, reuse_port: bool) -> socket.socket:
    """A socket bound to a port this process reserved, chosen below the kernel's ephemeral range: outgoing
    connections take their source ports from that range, so a client retrying against a server that is still
    starting cannot be holding the port it will bind."""
    low = _ephemeral_low()
    _sweep()
    for _ in range(100):
        port = secrets.randbelow(PORT_SPAN) + max(1024, low - PORT_SPAN)
        if port in _handed_out or port >= low:
            continue
        sock = _bound(host, port, reuse_port=reuse_port)
        if sock is None:
            continue
        if not _reserve(port):
            sock.close()
            continue
        _handed_out.add(port)
        return sock
    sock = _bound(host, 0, reuse_port=reuse_port)  # a crowded range: the kernel's pick
    if sock is None:
        raise OSError(f"no free port on {host}")
    return sock


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it before the server binds: for a port
    whose listener will receive secrets, use :class:`Held`)."""
    with _choose(host, reuse_port=False) as sock:
        return sock.getsockname()[1]


class Held:
    """A TCP port this process keeps bound, and never listens on, until :meth:`close`: reserved against other users.

    Why: the launcher publishes the ports of the servers it starts behind the door (Triton's command line, the
    reservations folder) before they listen, and Triton listens only once its models have loaded (seconds here,
    minutes on a GPU), then again after every restart, as does the gate after its own. Another local account that
    bound the port meanwhile would receive what the launcher, nginx and the gate send there, the internal and admin
    keys included. While this socket is bound with SO_REUSEPORT, Linux lets only sockets that also set SO_REUSEPORT
    and belong to the same user bind the port beside it (the servers started for it: Triton with
    ``--reuse-http-port``/``--reuse-grpc-port``, the gate's listeners), and a socket that never listens is handed no
    connection. Same-user processes are not kept out: they could read the keys from the servers' environment anyway.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """``port`` 0: a free one, chosen as :func:`free_port` chooses; else that port, which must be free."""
        if port == 0:
            self._sock: socket.socket | None = _choose(host, reuse_port=True)
        else:
            self._sock = _bound(host, port, reuse_port=True)
            if self._sock is None:
                raise PortInUseError(f"port {port} on {host} is already in use")
        self.port: int = self._sock.getsockname()[1]

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
