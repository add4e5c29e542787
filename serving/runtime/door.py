"""The front door: nginx owns the public HTTP and gRPC ports, Triton listens on 127.0.0.1 behind it.

Triton 2.51 has no request size limit (no ``--http-max-input-size``) and inflates ``Content-Encoding: gzip``
bodies without bound, so every deployment puts nginx in front (Debian's ``nginx-light``; ``make setup``
installs it). :func:`nginx_config` writes the whole configuration, used both by the launcher (a child
``nginx`` with its prefix, pid file and temp folders in a private temp folder) and by
``docker/nginx.conf`` for compose (``python -m serving.runtime.door --compose`` regenerates it).

Limits, per request:

* body: :data:`MAX_BODY` = :data:`REQUEST_MAX_BYTES` (64 MiB of images) + 1 MiB for the JSON or
  protobuf framing; larger gets HTTP 413 / gRPC RESOURCE_EXHAUSTED;
* compression: HTTP ``Content-Encoding`` or gRPC ``grpc-encoding`` other than identity is refused
  (HTTP 415 / gRPC INVALID_ARGUMENT) since the inflated size would be unbounded inside Triton;
* time: :data:`REQUEST_TIMEOUT_S` for the whole answer (past it HTTP 504 / gRPC DEADLINE_EXCEEDED, not the 503 /
  UNAVAILABLE of a server that cannot be reached, which invites a retry), 10 s for headers,
  :data:`BODY_READ_TIMEOUT_S` between body packets; the body of a public model's HTTP inference streams to the gate
  unbuffered, which holds the whole upload to a total deadline that grows with its length
  (``serving.runtime.gate_http.body_deadline_s``; HTTP 408 past it);
* connections: keep-alive 30 s and 1,000 requests, 128 concurrent gRPC streams per connection;
* per client address (:class:`ClientLimits`, docs/security.md "Fair sharing at the door"): concurrent requests
  (HTTP/2: streams) and a request rate with a burst; over them HTTP 429 / gRPC RESOURCE_EXHAUSTED;
* JSON: the JSON part of an HTTP request (the whole body, or the header part of the binary-data extension given by
  ``Inference-Header-Content-Length``) is at most :data:`MAX_JSON_BYTES`, else HTTP 413 (see there).

Readiness, draining and restarts (:class:`Door`): while the file ``unready`` exists in the prefix,
``/v2/health/ready`` answers 503 and inference is still served; while ``draining`` exists every new
request gets 503 (gRPC UNAVAILABLE), and a graceful ``nginx`` stop (SIGQUIT) then lets every accepted
request finish before it exits. While ``restarting`` exists (a crashed Triton being restarted, until it serves the
versions it served before: serving/runtime/pins.py) every new request gets 503 / UNAVAILABLE saying so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

# What a refused request reads while the server stops (flag ``draining``) and while a crashed Triton is restarted
# (flag ``restarting``); both are 503 / gRPC UNAVAILABLE, which callers may retry. Part of the contract: the client
# reads them.
from common.contract import PUBLIC_MODELS, RESTARTING, SHUTTING_DOWN
from common.ports import PortInUseError
from serving.runtime.children import Backoff, describe_exit, own_session_child
from serving.runtime.errors import TritonStartError
from serving.runtime.ports import Held
from serving.runtime.security import ADMIN_HEADER, without_keys
from serving.runtime.subproc import running, stop_process

try:
    import resource
except ImportError:  # not POSIX
    resource = None

#: Where the door sends the gRPC repository RPCs (admins only; not refused while Triton restarts).
_GRPC_REPOSITORY = "~ ^/inference[.]GRPCInferenceService/Repository"
#: How long a restart of the door tries to hold each public port while the dead master's workers let go of it.
HOLD_WAIT_S = 0.3
#: Largest request body of images the door accepts: a full batch must average 2 MiB per image. Same value as
#: Triton's own --http-max-input-size default in the releases that have that flag.
REQUEST_MAX_BYTES = 64 * 2**20
#: Largest request body accepted at the door (images plus framing).
MAX_BODY = REQUEST_MAX_BYTES + 2**20
#: What a body over MAX_BODY is answered (HTTP 413), by the door and by the edge gate.
BODY_TOO_LARGE = f"request body larger than {MAX_BODY} bytes; send fewer or smaller images"
#: Longest a request may take from the door's point of view (queueing and inference). The worst single
#: request is bounded by the per-request pixel budget (serving.pipeline.decode.REQUEST_MAX_PIXELS, ~5 s of decoding on
#: one core, measured on the 2-core CI machine); 60 s lets about 20 such requests queue ahead of one
#: on the two preprocess instances. The server's drain timeout is derived from it (serving.runtime.server).
REQUEST_TIMEOUT_S = 60
#: The same for the repository API (admins only: load, unload, index): a model load may take minutes (TensorFlow
#: on a GPU, with its warm-up), and ``serving.ops.rollout`` waits up to 300 s for one; a shorter bound here would
#: report a load that is still running as failed.
REPOSITORY_TIMEOUT_S = 600

#: Between two reads of a request body. nginx has no total upload deadline (client_body_timeout is per read): public
#: HTTP inference bodies get one at the gate (gate_http.body_deadline_s); elsewhere a body trickled just faster than
#: this holds its connection for as long as the caller likes, bounded per address by ClientLimits.connections (a
#: slow uploader only spends its own address's share), and the connection table is sized for it (WORKER_CONNECTIONS).
#: 10 s is still generous for any live uplink.
BODY_READ_TIMEOUT_S = 10
#: Connection table of the (single) worker: the target concurrency plus a hostile client's 1,100 slow uploads
#: with room to spare; a proxied request takes two entries (client and upstream). nginx on two cores serves
#: the crop path's few hundred requests/s with one worker, so more workers would only compete with Triton.
WORKER_CONNECTIONS = 8192
#: Requests on one client connection before nginx closes it (a GOAWAY on HTTP/2; gRPC clients reconnect): nginx
#: frees some per-connection memory only when a connection closes, so a connection that lived forever would keep
#: growing. nginx's own default. h2load does not reconnect, so the native benchmark accounts for it
#: (loadtest/bench/loadgen.py, ``Run.open_s``).
KEEPALIVE_REQUESTS = 1000
#: Open files nginx asks for (a connection is one file); capped to the hard limit when not root (no privilege to
#: raise it).
WORKER_NOFILE = 2 * WORKER_CONNECTIONS + 64


@dataclasses.dataclass(frozen=True)
class ClientLimits:
    """What one client address may hold at the door (nginx keys them on ``$binary_remote_addr``).

    Defaults let one load generator run the target concurrency (c=64, HTTP or gRPC) with headroom, while one
    hostile address cannot take the connection table or the request queue from everyone else. Environment:
    ``DOOR_CLIENT_CONNECTIONS``, ``DOOR_CLIENT_RATE``, ``DOOR_CLIENT_BURST``; the launcher has the same options.
    Behind another proxy or load balancer every caller shares its address: raise the limits there (or keep the
    door as the first hop).
    """

    #: Requests in flight at once (HTTP/1.1: connections with a request; HTTP/2: streams), nginx ``limit_conn``.
    connections: int = 128
    #: Sustained requests per second (nginx ``limit_req``): above what one server serves on the crop path (about
    #: 200-350/s at c=16 on the 2-core VMs, docs/performance.md), so one load generator is never limited by it.
    rate: int = 1000
    #: Requests above the rate accepted at once before 429 (``burst ... nodelay``: no added latency).
    burst: int = 1000

    ENV = {"connections": "DOOR_CLIENT_CONNECTIONS", "rate": "DOOR_CLIENT_RATE", "burst": "DOOR_CLIENT_BURST"}

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"door client limit {field.name} must be a positive integer, got {value!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: int | None) -> ClientLimits:
        """Defaults, then the environment, then ``overrides`` that are not None (launcher options)."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, env in cls.ENV.items():
            raw = environ.get(env, "").strip()
            if raw:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{env} must be a positive integer, got {raw!r}") from None
        values |= {k: v for k, v in overrides.items() if v is not None}
        return cls(**values)


#: Part of the cancelled-ensemble workaround for Triton 2.51 (why: common/triton_workarounds.py): the door drops
#: the ``grpc-timeout`` header, so Triton never cancels on its own timer; the caller still gets DEADLINE_EXCEEDED
#: from its own gRPC library. The caller's cancellation itself stops at the gate (serving/runtime/gate.py); where no
#: gate stands between nginx and Triton it would still reach Triton (measured: 5 x 5 ms deadlines crash 2.51).
#: Delete with that entry.
STRIP_GRPC_DEADLINE = True


#: Workaround for Triton 2.51 and 25.02 alike: Triton parses HTTP JSON with RapidJSON's recursive parser, so a
#: body of deeply nested brackets overflows the HTTP thread's stack and segfaults the server (measured on 2.51
#: with 8 MiB stacks: 30,000 levels survive, 60,000 = a 120 KB body kill it; found by loadtest/abuse/suite.py). Fixed
#: upstream by triton-inference-server/common#156 (iterative parsing, merged April 2026), i.e. in no release we pin.
#: Bounding the JSON to 16 KiB bounds the depth with a 2x margin; images travel in the binary part (tritonclient
#: always sends them so), and inference headers are a few hundred bytes. Delete once the binary has the fix.
MAX_JSON_BYTES = 16384
# Regex for a decimal number 0..MAX_JSON_BYTES (nginx has no numeric comparison).
_JSON_TOO_LONG = (
    f"the JSON part of the request is over {MAX_JSON_BYTES} bytes (or its length is not given); send tensors in the "
    "binary data extension (Inference-Header-Content-Length), as tritonclient does"
)
_JSON_LEN = "([0-9]{1,4}|1[0-5][0-9]{3}|16[0-2][0-9]{2}|163[0-7][0-9]|1638[0-4])"
# Model names in nginx regexes (they are plain identifiers), and the answer for every other model's path.
_PUBLIC = "|".join(PUBLIC_MODELS)
_ADMIN_VAR = ADMIN_HEADER.lower().replace("-", "_")  # nginx's $http_<name> for that header
#: The door's answers in words the gate repeats where no door stands in front of it (gate_http, ``edge``).
NOT_PUBLIC = f"not a public model, or not a public API of one (public models: {', '.join(PUBLIC_MODELS)})"
COMPRESSED = "compressed request bodies (Content-Encoding) are not accepted"
#: The caller's address, as nginx saw it, on every request it forwards (replacing any the caller sent): the gate
#: counts each address's calls still outstanding behind the door (gate_relay.Upstream).
CLIENT_HEADER = "X-Agegender-Client"


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


#: Stands for a config line that is left out (the whole line goes).
_OMIT = "#omit#"


def _nofile() -> int:
    """WORKER_NOFILE, or the hard limit where nginx may not raise it (not root)."""
    if resource is None or os.geteuid() == 0:
        return WORKER_NOFILE
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return WORKER_NOFILE if hard == resource.RLIM_INFINITY else min(WORKER_NOFILE, hard)


#: The account nginx's workers run as when the launcher runs as root: one used for nothing else. Under a shared
#: account such as ``nobody`` any other process of that account could read a worker's memory (/proc/PID/mem, which
#: the worker makes readable to its own account after dropping root), where every request passing the door lies,
#: admins' ``admin-key`` headers among them, and the internal key of the config; or stop or kill the workers
#: (red team, 2026-12-07, as ``nobody``: both keys read from a worker).
WORKER_USER = "agegender-door"


def _worker_user() -> str:
    """The config's ``user`` line: :data:`WORKER_USER` when started as root, none otherwise (nginx then keeps the
    launcher's own account, whose processes could read the launcher's keys anyway)."""
    if os.geteuid() != 0:
        return ""
    import grp

    entry = worker_account()
    return f"user {entry.pw_name} {grp.getgrgid(entry.pw_gid).gr_name};"


def worker_account() -> pwd.struct_passwd:
    """:data:`WORKER_USER`'s entry, the account made first when missing: a system account in a group of its own,
    without a home or a login shell."""
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    command = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    why = ""
    # A few tries: doors started side by side (tests) each try, and useradd refuses while another holds /etc/passwd.
    for _ in range(20):
        with contextlib.suppress(KeyError):  # there, or made by another launcher meanwhile
            return pwd.getpwnam(WORKER_USER)
        try:
            made = subprocess.run(
                [*command, "--shell", "/usr/sbin/nologin", WORKER_USER], capture_output=True, text=True, check=False
            )
            why = made.stderr.strip() or f"useradd exited {made.returncode}"
        except OSError as err:
            why = str(err)
            break
        if made.returncode == 0:
            continue
        time.sleep(0.25)
    try:
        return pwd.getpwnam(WORKER_USER)
    except KeyError:
        raise TritonStartError(
            f"could not make the account {WORKER_USER!r} that the door's nginx workers run as under root ({why}): "
            f"make it (useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {WORKER_USER}) or "
            "start the launcher as another user"
        ) from None


def nginx_config(
    *,
    prefix: str,
    listen_host: str,
    http_port: int,
    grpc_port: int,
    triton_http: str,
    triton_grpc: str,
    error_log: str = "stderr",
    pid: str | None = None,
    user: str | None = None,
    limits: ClientLimits | None = None,
    internal_key: str | None = None,
    nofile: int | None = None,
    gate_http: str | None = None,
    gate_grpc: str | None = None,
    request_timeout_s: int = REQUEST_TIMEOUT_S,
    repository_timeout_s: int = REPOSITORY_TIMEOUT_S,
) -> str:
    """The complete nginx.conf. ``triton_http``/``triton_grpc`` are the ``host:port`` Triton listens on.

    ``internal_key``: presented to Triton on every forwarded request (serving/runtime/security.py
    ``INTERNAL_APIS``); the file then holds a secret, so :class:`Door` writes it owner-only.
    """
    user = _worker_user() if user is None else user
    limits = ClientLimits() if limits is None else limits
    http_key = grpc_key = _OMIT
    if internal_key is not None:
        from serving.runtime import security

        http_key = f'proxy_set_header {security.INTERNAL_HEADER} "{internal_key}";'
        grpc_key = f'grpc_set_header {security.GRPC_INTERNAL_METADATA} "{internal_key}";'
    too_many = (
        f"too many requests from your address (at most {limits.connections} at once and {limits.rate} per second, "
        f"bursts of {limits.burst}); retry later"
    )
    timed_out = (
        f"no answer within {request_timeout_s} s: the server is overloaded or the request too large; "
        "send fewer or smaller images, or retry later"
    )

    def forward(seconds: int) -> str:
        """How the HTTP locations forward to the gate or Triton (one connection pool, one time budget)."""
        return f"\n{' ' * 20}".join(
            [
                "proxy_http_version 1.1;",
                'proxy_set_header Connection "";',
                # nginx 1.22's $http_content_encoding is the first such header only: a second one (identity,
                # then gzip) passed the check below and the gate inflated the body. None is passed on at all.
                'proxy_set_header Content-Encoding "";',
                f"proxy_set_header {CLIENT_HEADER} $remote_addr;",
                http_key,
                "proxy_connect_timeout 5s;",
                f"proxy_send_timeout {seconds}s;",
                f"proxy_read_timeout {seconds}s;",
                "proxy_next_upstream off;",
            ]
        )

    strip = 'grpc_set_header grpc-timeout "";' if STRIP_GRPC_DEADLINE else ""

    def http_checks(json_too_long: str, restarting: bool = True) -> str:
        """The checks every forwarded HTTP request passes first; ``json_too_long``: the variable saying its JSON is
        over MAX_JSON_BYTES (only inference bodies may name their JSON part's length; Triton reads any other body
        whole, whatever Inference-Header-Content-Length says); ``restarting``: refused while the flag is set (not
        the repository API: an admin must be able to act on a restart that does not settle)."""
        return f"\n{' ' * 20}".join(
            [
                f'if ($compressed) {{ return 415 \'{{"error":"{COMPRESSED}"}}\'; }}',
                f'if (${json_too_long}) {{ return 413 \'{{"error":"{_JSON_TOO_LONG}"}}\'; }}',
                f'if (-f {prefix}/draining) {{ return 503 \'{{"error":"{SHUTTING_DOWN}"}}\'; }}',
                *(
                    [f'if (-f {prefix}/restarting) {{ return 503 \'{{"error":"{RESTARTING}"}}\'; }}']
                    if restarting
                    else []
                ),
            ]
        )

    def grpc_location(match: str, seconds: int, restarting: bool = True) -> str:
        """A gRPC location: refusals first (``restarting``: as for http_checks), then to the gate with ``seconds``
        for the answer."""
        refusals = [("draining", SHUTTING_DOWN), *([("restarting", RESTARTING)] if restarting else [])]
        lines = [
            f"location {match} {{",
            "    if ($grpc_compressed) {",
            "        add_header grpc-status 3 always;",
            '        add_header grpc-message "compressed gRPC messages (grpc-encoding) are not accepted" always;',
            "        add_header content-type application/grpc always;",
            "        return 200;",
            "    }",
            *(
                line
                for flag, message in refusals
                for line in (
                    f"    if (-f {prefix}/{flag}) {{",
                    "        add_header grpc-status 14 always;",
                    f'        add_header grpc-message "{message}" always;',
                    "        add_header content-type application/grpc always;",
                    "        return 200;",
                    "    }",
                )
            ),
            f"    {strip}",
            f"    {grpc_key}",
            # The first grpc-encoding header only is checked above: none is passed on, so a second one (identity,
            # then gzip) cannot have the gate inflate a message.
            '    grpc_set_header grpc-encoding "";',
            f"    grpc_set_header {CLIENT_HEADER.lower()} $remote_addr;",
            "    grpc_pass grpc://gate_grpc;",
            "    # Triton echoes names into grpc-message; nginx's default 4-8k header buffer turned the error of",
            "    # a 5,000-character model name into a misleading UNAVAILABLE (found by loadtest/abuse/suite.py).",
            "    grpc_buffer_size 64k;",
            "    grpc_connect_timeout 5s;",
            f"    grpc_send_timeout {seconds}s;",
            f"    grpc_read_timeout {seconds}s;",
            "}",
        ]
        return f"\n{' ' * 16}".join(lines)

    pid_line = f"pid {pid or prefix + '/nginx.pid'};"
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temps = "\n".join(f"{kind}_temp_path {prefix}/{kind}_temp;" for kind in kinds)
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    text = textwrap.dedent(
        f"""\
        # Generated by serving/runtime/door.py: edit that file, not this one.
        daemon off;
        {user}
        worker_processes 1;
        worker_rlimit_nofile {nofile or _nofile()};
        {pid_line}
        error_log {error_log} warn;
        events {{ worker_connections {WORKER_CONNECTIONS}; }}
        http {{
            access_log off;
            server_tokens off;
            default_type application/json;
            {temps.replace(chr(10), chr(10) + " " * 12)}
            client_max_body_size {MAX_BODY};
            client_body_buffer_size 1m;
            client_header_timeout 10s;
            client_body_timeout {BODY_READ_TIMEOUT_S}s;
            # A timed-out connection is reset, not closed gracefully: its memory is freed at once.
            reset_timedout_connection on;
            # A refused request's unread body is drained for at most this long before the connection closes.
            lingering_time 10s;
            lingering_timeout 2s;
            # Fair sharing (ClientLimits): per client address; 429 (gRPC RESOURCE_EXHAUSTED) over them.
            limit_conn_zone $binary_remote_addr zone=per_client:10m;
            limit_req_zone $binary_remote_addr zone=per_client_rate:10m rate={limits.rate}r/s;
            limit_conn per_client {limits.connections};
            limit_req zone=per_client_rate burst={limits.burst} nodelay;
            limit_conn_status 429;
            limit_req_status 429;
            limit_conn_log_level info;  # below error_log's level: an attack must not flood the log
            limit_req_log_level info;
            send_timeout 30s;
            keepalive_timeout 30s;
            keepalive_requests {KEEPALIVE_REQUESTS};
            large_client_header_buffers 4 16k;
            http2_max_concurrent_streams 128;
            # Any compressed body is refused: its inflated size is unbounded inside Triton.
            map $http_content_encoding $compressed {{ default 1; "" 0; identity 0; }}
            map $http_grpc_encoding $grpc_compressed {{ default 1; "" 0; identity 0; }}
            # JSON part too long (see MAX_JSON_BYTES): key = binary-extension header length : body length : chunked.
            map "$http_inference_header_content_length:$content_length:$http_transfer_encoding" $json_too_long {{
                default 1;
                "~^{_JSON_LEN}:" 0;
                "~^:{_JSON_LEN}?:$" 0;
            }}
            map "$content_length:$http_transfer_encoding" $body_too_long {{
                default 1;
                "~^{_JSON_LEN}?:$" 0;
            }}
            upstream triton_http {{ server {triton_http}; keepalive 16; }}
            upstream triton_grpc {{ server {triton_grpc}; keepalive 16; }}
            # The gate (serving/runtime/gate.py) checks what nginx cannot read: all gRPC, and HTTP inference of the
            # public models (declared shapes); without one (gate_* None) those go to Triton unchecked.
            upstream gate_http {{ server {gate_http or triton_http}; keepalive 16; }}
            upstream gate_grpc {{ server {gate_grpc or triton_grpc}; keepalive 16; }}
            # HTTP routing by decoded path (inference of the public models has a location of its own, below): models
            # other than the public ones are not public at all, except their metadata, config and readiness to a
            # caller with an admin key (checked by the gate; serving.ops.rollout).
            map $http_{_ADMIN_VAR} $admin_given {{ "" 0; default 1; }}
            map "$admin_given$uri" $route {{
                default triton_http;
                "~^./v2/models/({_PUBLIC})(/versions/[0-9]+)?(/config|/ready|/stats|/trace/setting)?$" triton_http;
                "~^./v2/models/stats$" triton_http;
                "~^1/v2/models/[^/]+(/versions/[0-9]+)?(/config|/ready)?$" gate_http;
                "~^./v2/models/" not_public;
            }}

            server {{
                listen {host}:{http_port};
                # 502: nothing answers behind the door (a restart); 504: it took the connection but gave no answer
                # within the request timeout (overload), which a retry would only add to.
                error_page 502 =503 @unavailable;
                error_page 504 @timed_out;
                error_page 413 @too_large;
                error_page 429 @too_many;
                location = /v2/health/ready {{
                    if (-f {prefix}/unready) {{ return 503 '{{"error":"{SHUTTING_DOWN}"}}'; }}
                    if (-f {prefix}/draining) {{ return 503 '{{"error":"{SHUTTING_DOWN}"}}'; }}
                    if (-f {prefix}/restarting) {{ return 503 '{{"error":"{RESTARTING}"}}'; }}
                    # The gate asks Triton about each served model: Triton's own readiness stays "not ready" once any
                    # version has failed to load, though the one before serves on (gate.GrpcGate.not_ready).
                    proxy_pass http://gate_http;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    {http_key}
                }}
                # Inference of the public models: the body goes to the gate as it arrives, not buffered here, so the
                # gate can hold the whole upload to a total deadline (gate_http.body_deadline_s), which nginx cannot
                # (client_body_timeout is per read). Content-Length is still capped here (413 before any byte).
                location ~ "^/v2/models/({_PUBLIC})(/versions/[0-9]+)?/infer$" {{
                    {http_checks("json_too_long")}
                    proxy_pass http://gate_http;
                    proxy_request_buffering off;
                    {forward(request_timeout_s)}
                }}
                # The repository API (Triton checks the admin key): a load answers when the model is loaded.
                location ^~ /v2/repository/ {{
                    {http_checks("body_too_long", restarting=False)}
                    proxy_pass http://triton_http;
                    {forward(repository_timeout_s)}
                }}
                location / {{
                    # First: whatever the body, a model that is not public is simply not there (as for a GET).
                    if ($route = not_public) {{ return 404 '{{"error":"{NOT_PUBLIC}"}}'; }}
                    {http_checks("body_too_long")}
                    proxy_pass http://$route;
                    {forward(request_timeout_s)}
                }}
                location @unavailable {{
                    return 503 '{{"error":"Triton is not reachable (restarting?); retry shortly"}}';
                }}
                location @timed_out {{
                    return 504 '{{"error":"{timed_out}"}}';
                }}
                location @too_large {{
                    return 413 '{{"error":"{BODY_TOO_LARGE}"}}';
                }}
                location @too_many {{
                    add_header Retry-After 1 always;
                    return 429 '{{"error":"{too_many}"}}';
                }}
            }}

            server {{
                listen {host}:{grpc_port} http2;
                error_page 413 @too_large;
                error_page 429 @too_many;
                error_page 502 @unavailable;
                error_page 504 @timed_out;
                {grpc_location("/", request_timeout_s)}
                # The repository API (the gate checks the admin key): a load answers when the model is loaded.
                {grpc_location(_GRPC_REPOSITORY, repository_timeout_s, restarting=False)}
                location @too_large {{
                    add_header grpc-status 8 always;
                    add_header grpc-message "request larger than {MAX_BODY} bytes; send fewer or smaller images" always;
                    add_header content-type application/grpc always;
                    return 200;
                }}
                location @too_many {{
                    add_header grpc-status 8 always;
                    add_header grpc-message "{too_many}" always;
                    add_header content-type application/grpc always;
                    return 200;
                }}
                location @unavailable {{
                    add_header grpc-status 14 always;
                    add_header grpc-message "Triton is not reachable (restarting?); retry shortly" always;
                    add_header content-type application/grpc always;
                    return 200;
                }}
                location @timed_out {{
                    add_header grpc-status 4 always;
                    add_header grpc-message "{timed_out}" always;
                    add_header content-type application/grpc always;
                    return 200;
                }}
            }}
        }}
        """
    )
    return re.sub(rf"(?m)^[ \t]*{_OMIT}\n", "", text)


class Door:
    """A child ``nginx`` with its own prefix folder; owns the public ports, forwards to Triton."""

    def __init__(self, prefix: Path, **config):
        self.prefix = Path(prefix)
        self.config_path = self.prefix / "nginx.conf"
        self.config = config
        self.proc: subprocess.Popen | None = None
        self._preexec = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # a restart (keep_running) and stop() one at a time

    def start(self, preexec_fn: Callable[[], None] = own_session_child) -> subprocess.Popen:
        """Starts nginx. ``preexec_fn``: by default the master leads its own session and process group, which
        :meth:`stop` needs to end the workers of a master that was killed or had died; tests started their doors
        without it, in their own group, where a killed master's worker would live on (one test run left a door
        worker listening, cause not traced). The master also gets SIGTERM when the starting thread ends
        (children.die_with_parent)."""
        self._preexec = preexec_fn
        binary = find_nginx()
        if binary is None:
            raise FileNotFoundError(
                "nginx not found: the launcher puts it in front of Triton to bound request sizes. "
                "Install it with `apt-get install -y nginx-light` (make setup does this)."
            )
        self.prefix.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self.prefix.chmod(0o711)  # workers (WORKER_USER) reach their temp folders, cannot list the prefix
        # Owner-only: the config may hold the internal key (and the prefix is 0711 for root's workers).
        self.config_path.unlink(missing_ok=True)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(nginx_config(prefix=str(self.prefix), **self.config))
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.prefix), "-c", str(self.config_path), "-e", "stderr"],
            # nginx gets the internal key in its owner-only config, never the operator's keys in its environment.
            env=without_keys(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=preexec_fn,
        )
        return self.proc

    def set_flag(self, name: str) -> None:
        (self.prefix / name).touch()

    def clear_flag(self, name: str) -> None:
        (self.prefix / name).unlink(missing_ok=True)

    def stop(self, timeout: float) -> None:
        """Graceful stop: listeners close, accepted requests finish (up to ``timeout`` s), then exit; past the
        timeout the master and its workers are killed."""
        self._stopping.set()  # first: a master that dies from here on is not started again (keep_running)
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        # group: a worker outlives its killed master for as long as a client keeps a connection open (a body trickled
        # within the read timeout), and a master that died before this stop leaves its workers running; started in
        # its own session (children.own_session_child), the master leads the workers' group. Called whatever the
        # master's state: stop_process also ends the group of a master that has exited (not yet reaped).
        stop_process(proc, timeout=timeout, sig=signal.SIGQUIT, group=True)

    def keep_running(self, report: Callable[[str], None], on_start: Callable[[subprocess.Popen], None]) -> None:
        """From now until :meth:`stop`: whenever the master dies, what is left of its group is killed (its workers
        still hold the public ports) and nginx starts again, same ports, prefix and flags, after a backoff
        (children.RESTART_BACKOFF_S). ``report`` says what happened; ``on_start(proc)`` for each new master.

        Why: twice in test runs a door master was gone before its server stopped (the cause not found), and its
        worker kept listening, answering 503: the server would have served nothing on its public ports from then on
        while Triton ran. The server calls this once it is ready, so a door that fails at start fails the start."""
        threading.Thread(target=self._keep_running, args=(report, on_start), daemon=True, name="door-watch").start()

    def _keep_running(self, report: Callable[[str], None], on_start: Callable[[subprocess.Popen], None]) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return  # stopped
            if proc.returncode is None:  # running, or dead and unreaped: wait for its end, still unreaped
                born = time.monotonic()
                try:  # WNOWAIT: its pid keeps naming the group its workers are in
                    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:  # reaped: by stop()
                    return
                backoff.died(time.monotonic() - born)
            retry = backoff.after
            try:
                self._start_again(proc, backoff.wait, retry, report, on_start)
            except Exception as err:  # noqa: BLE001 - this thread is what keeps the door up: it must outlive a failure
                # What escapes _start_again failed before its backoff (it reports what fails after): waited here, so
                # that a failure that repeats cannot spin. The old, reaped master stays in self.proc, so the next
                # round starts again without waiting for it to die, after its own backoff.
                report(f"the nginx front door did not start again ({err}); trying again in {retry:.0f} s")
                if self._stopping.wait(backoff.wait):
                    return
            backoff.waited()

    def _start_again(
        self, dead: subprocess.Popen, backoff: float, retry: float, report: Callable[[str], None], on_start: Callable
    ) -> None:
        """Ends what is left of ``dead``'s group, waits ``backoff`` holding the public ports, starts nginx. A failure
        from the start on is reported here (the next try in ``retry`` s); one before the backoff is raised."""
        with self._lock:
            if self._stopping.is_set() or self.proc is not dead:
                return
            if dead.returncode is None:
                stop_process(dead, timeout=0, group=True)  # what is left of its group: its workers hold the ports
                report(f"the nginx front door {describe_exit(dead.returncode)}; starting it again in {backoff:.0f} s")
        held = self._hold_public_ports()
        try:
            if self._stopping.wait(backoff):
                return
        finally:
            for hold in held:
                hold.close()
        with self._lock:
            if self._stopping.is_set():
                return
            try:  # a master it started gets SIGTERM when this process ends: children.die_with_parent
                started = self.start(self._preexec)
            except Exception as err:  # noqa: BLE001 - reported; the watcher tries again after the next backoff
                report(f"the nginx front door did not start again ({err}); trying again in {retry:.0f} s")
                return
        try:
            on_start(started)
        except Exception as err:  # noqa: BLE001 - the door runs: only what the server does with a new master failed
            report(f"the nginx front door started again, but setting it up failed: {err}")

    def _hold_public_ports(self) -> list[Held]:
        """The public ports bound here (SO_REUSEPORT, never listening: ports.Held) while no nginx has them, so that
        no other account takes them during the backoff and receives the callers' uploads; released right before
        nginx binds them. Best effort: a port that cannot be bound within HOLD_WAIT_S (the killed workers' sockets
        not gone yet, a connection of theirs in TIME_WAIT, which only nginx's SO_REUSEADDR binds past) is not held."""
        held = []
        for port in (self.config["http_port"], self.config["grpc_port"]):
            deadline = time.monotonic() + HOLD_WAIT_S
            while True:
                try:
                    held.append(Held(self.config["listen_host"], port))
                    break
                except (OSError, PortInUseError):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
        return held

    def running(self) -> bool:
        """Whether the master runs, asked without reaping it (:func:`subproc.running`): :meth:`stop` needs an
        unreaped master to find the group its workers are in."""
        return self.proc is not None and running(self.proc)


def compose_nginx_config() -> str:
    """The config of the compose ``door`` service, committed as ``docker/nginx.conf``."""
    return nginx_config(
        prefix="/var/cache/nginx",  # exists (and is writable) in the official nginx image
        listen_host="0.0.0.0",
        http_port=8000,
        grpc_port=8001,
        triton_http="triton:8000",
        triton_grpc="triton:8001",
        # The compose `gate` service (docker/gate.Dockerfile): serving/runtime/gate.py on these ports.
        gate_http="gate:8010",
        gate_grpc="gate:8011",
        pid="/tmp/nginx.pid",
        user="",
        nofile=WORKER_NOFILE,  # root in the official image
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Prints the nginx config compose uses (docker/nginx.conf).")
    p.add_argument("--compose", action="store_true", help="the config for the compose `door` service")
    p.parse_args(argv)
    sys.stdout.write(compose_nginx_config())
    return 0


if __name__ == "__main__":
    sys.exit(main())
