"""Locust load test of the Triton deployment, over gRPC or HTTP (KServe v2).

Headless run that writes Locust's CSV and HTML reports and fails on a bad fail ratio or p95
(see also ``make loadtest``)::

    locust -f loadtest/locust/locustfile.py --headless -u 16 -r 4 -t 20s TritonGrpcUser \\
        --image-dir gradio_frontend/examples --path crop --batch-size 4 --max-p95-ms 500 \\
        --csv loadtest/results/locust --html loadtest/results/locust.html

Custom options (also in the web UI, and forwarded by a master to its workers):

- ``--image-dir``: folder of JPEG/PNG/WebP/BMP images sent round-robin [$LOCUST_IMAGE_DIR].
- ``--path detect|crop|faces``: ensemble ``age_gender`` (face detection), ``age_gender_crop`` (aligned crops)
  or the ``faces`` model (every face; one image per request, so ``--batch-size`` is ignored). For ``faces``
  Locust's "size" column counts faces, and the summary logs faces/s beside requests/s.
- ``--model``: target one model instead of an ensemble (``preprocess``, ``age``, ``gender`` ...); for
  ``age``/``gender`` the images are resized to the model's uint8 input here, as the ensemble would.
- ``--batch-size``: images per request; Locust counts requests, so img/s = req/s x batch size.
- ``--triton-grpc-url`` / ``--triton-http-url``: [$TRITON_GRPC_URL / $TRITON_HTTP_URL].
- ``--max-fail-ratio`` / ``--max-p95-ms``: exit code 1 when exceeded (checked on the master/local runner).
- ``--retry-window`` / ``--max-unavailable-s``: a request retries for up to the window while the server is unavailable
  (a restart); the time the server was unavailable, as the users saw it, fails the run above ``--max-unavailable-s``
  (default 0: any outage is a finding; give the restart time you accept to test riding one out). A request still
  unanswered when the run ends (still retrying, or waiting past ``--request-timeout``) counts as a failure.

Users wait 0 s between requests (closed loop), so ``-u`` is the number of requests in flight.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# gRPC's C core runs its own threads, which block gevent's loop unless gRPC is told to use
# gevent-friendly polling; this must happen before any channel is created.
import grpc.experimental.gevent as grpc_gevent  # noqa: I001 - must precede the tritonclient.grpc import

grpc_gevent.init_gevent()

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from gevent import GreenletExit  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402
from PIL import Image  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from client.errors import RateLimitedError, translate  # noqa: E402
from common import contract as c  # noqa: E402
from common.contract import FACES_BOX, FACES_MODEL, FACES_OUTPUTS  # noqa: E402
from common.ports import default_address  # noqa: E402

log = logging.getLogger("loadtest")

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
ENSEMBLES = {"detect": c.DETECT_ENSEMBLE, "crop": c.CROP_ENSEMBLE, "faces": FACES_MODEL}
#: Models whose input is the decoded, resized face rather than encoded bytes.
TENSOR_MODELS = set(c.TASK_MODELS)
_PREPROCESS_OUTPUTS = (*c.PREPROCESS_FACES.values(), c.ENSEMBLE_FOUND, c.ENSEMBLE_ERROR)
OUTPUTS = {
    c.DETECT_ENSEMBLE: c.ESTIMATE_OUTPUTS,
    c.CROP_ENSEMBLE: c.ESTIMATE_OUTPUTS,
    c.PREPROCESS_MODEL: _PREPROCESS_OUTPUTS,
    c.PREPROCESS_CROP_MODEL: _PREPROCESS_OUTPUTS,
    # Every output of each CNN, as the ensembles and the faces model ask for them (age: its interval too).
    **c.TASK_MODEL_OUTPUTS,
    FACES_MODEL: FACES_OUTPUTS,
}


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    # Locust's web UI (no login: anyone who reaches it can start load) and its master port listen on every interface
    # by default; here on loopback unless asked (the compose master passes 0.0.0.0 inside its network).
    parser.set_defaults(web_host="127.0.0.1", master_bind_host="127.0.0.1")
    group = parser.add_argument_group("Triton age/gender")
    group.add_argument(
        "--image-dir",
        env_var="LOCUST_IMAGE_DIR",
        default=str(ROOT / "gradio_frontend" / "examples"),
        help="folder of images to send",
    )
    group.add_argument(
        "--path",
        choices=sorted(ENSEMBLES),
        default="detect",
        help="detect: age_gender ensemble; crop: age_gender_crop (no detection); faces: every face",
    )
    group.add_argument("--model", default="", help="target this model instead of the --path ensemble")
    group.add_argument("--batch-size", type=int, default=1, help="images per request")
    group.add_argument("--triton-grpc-url", env_var="TRITON_GRPC_URL", default=default_address("grpc", "localhost"))
    group.add_argument("--triton-http-url", env_var="TRITON_HTTP_URL", default=default_address("http", "localhost"))
    group.add_argument("--request-timeout", type=float, default=30.0, help="seconds per request")
    group.add_argument(
        "--retry-window",
        type=float,
        default=RETRY_WINDOW_S,
        help="seconds a request retries while the server is unavailable (a restart); 0: no retries",
    )
    group.add_argument(
        "--max-unavailable-s",
        type=float,
        default=0.0,
        help="exit 1 when the server was unavailable (requests retrying) for longer than this many seconds in all",
    )
    group.add_argument("--max-fail-ratio", type=float, default=0.01, help="exit 1 above this failure ratio")
    group.add_argument("--max-p95-ms", type=float, default=0.0, help="exit 1 when p95 exceeds it (0: no bound)")


def target_model(options: Any) -> str:
    return options.model or ENSEMBLES[options.path]


def load_corpus(image_dir: str | os.PathLike, model: str) -> list[Any]:
    """Reads every image once, so the test measures the server and not the load generator's disk."""
    files = sorted(p for p in Path(image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"--image-dir {image_dir}: no {sorted(IMAGE_SUFFIXES)} images found")
    if model in TENSOR_MODELS:
        # Imported lazily: only this mode needs the shared preprocessing spec.
        from common.spec import image_size, to_model_input

        return [to_model_input(Image.open(p), image_size(model)) for p in files]  # CNNs are named after tasks
    return [p.read_bytes() for p in files]


def input_name(model: str) -> str:
    """The input tensor each kind of model reads: crops for the CNNs, one image for faces, images for ensembles."""
    if model in TENSOR_MODELS:
        return c.CROP_INPUT
    return c.FACES_INPUT if model == FACES_MODEL else c.IMAGE_INPUT


def make_batch(corpus: list[Any], start: int, size: int, model: str) -> np.ndarray:
    items = [corpus[(start + k) % len(corpus)] for k in range(size)]
    if model in TENSOR_MODELS:
        return np.stack(items).astype(np.uint8)
    if model == FACES_MODEL:
        return np.array(items[:1], dtype=np.object_)  # no batch dimension: one image per request
    batch = np.empty((size, 1), dtype=np.object_)
    for k, blob in enumerate(items):
        batch[k, 0] = blob
    return batch


#: A request retries for up to this long (default of --retry-window) while the server is unavailable: a
#: Triton restarted by the launcher is ready again within its cold start (about 5 s here). Its response time
#: includes the retries.
RETRY_WINDOW_S = 15.0
RETRY_FIRST_WAIT_S = 0.25
RETRY_MAX_WAIT_S = 2.0


class Outages:
    """How long the server was unavailable, as this process's requests saw it: the time during which at least one
    request was between an unavailable answer and its next answer (or the end of the run), and how many requests
    had to retry.

    Retries keep a restart from turning into a burst of failures, but they also hid it: a server stopped halfway
    through a run left its users retrying until the end, those requests were never recorded, and the run passed on
    what it served before. The quitting hook holds this time to ``--max-unavailable-s``.
    """

    def __init__(self) -> None:
        self.waiting = 0
        self.since = 0.0
        self.closed_s = 0.0
        self.retried = 0

    def begin(self) -> None:
        if self.waiting == 0:
            self.since = time.monotonic()
        self.waiting += 1
        self.retried += 1

    def end(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.closed_s += time.monotonic() - self.since

    def seconds(self) -> float:
        return self.closed_s + (time.monotonic() - self.since if self.waiting else 0.0)

    def summary(self) -> dict:
        return {"seconds": self.seconds(), "retried": self.retried}


OUTAGES = Outages()
#: The latest Outages.summary() of each worker, on a master (sent with the workers' stats reports).
_worker_outages: dict[str, dict] = {}


class TritonRequester:
    """Wraps one tritonclient and reports every inference to Locust through ``events.request``.

    Follows the pattern of Locust's custom-client examples: the User owns the client, the client
    times its own calls, so any Locust runner, report or event hook sees them like HTTP requests.
    """

    protocol = ""

    def __init__(self, environment: Any, url: str, timeout: float) -> None:
        self.environment = environment
        self.url = url
        self.timeout = timeout
        self.retry_window = getattr(environment.parsed_options, "retry_window", RETRY_WINDOW_S)

    def _infer(self, model: str, batch: np.ndarray, outputs: tuple[str, ...]) -> Any:
        raise NotImplementedError

    def infer(self, model: str, batch: np.ndarray) -> None:
        outputs = OUTPUTS.get(model, ())
        name = model if model == FACES_MODEL else f"{model} b={len(batch)}"
        units = len(batch)
        start = time.perf_counter()
        exception: BaseException | None = None
        retries = 0
        last_error: BaseException | None = None
        outage = False  # whether this request is counted in OUTAGES (from its first unavailable answer)
        try:
            while True:
                try:
                    result = self._infer(model, batch, outputs)
                    break
                except (InferenceServerException, OSError) as exc:
                    # Inference is idempotent: while the server is unavailable (the launcher restarting a
                    # crashed Triton answers 502/503/UNAVAILABLE at the door), try again, as the client does.
                    wait = min(RETRY_FIRST_WAIT_S * 2**retries, RETRY_MAX_WAIT_S)
                    if not self._unavailable(exc, model):
                        raise
                    if not outage:
                        outage = True
                        OUTAGES.begin()  # ended in the finally below, however the request ends
                    last_error = exc
                    if time.perf_counter() + wait > start + self.retry_window:
                        raise
                retries += 1
                time.sleep(wait)  # gevent's, under Locust
            if model == FACES_MODEL:
                units = len(result.as_numpy(FACES_BOX))  # faces found: Locust totals them as "size"
            if c.ENSEMBLE_ERROR in outputs:  # the faces model's error output has the same name
                errors = [e for e in np.asarray(result.as_numpy(c.ENSEMBLE_ERROR)).ravel() if e]
                if errors:
                    # A per-item error means the corpus or the server is broken, not a slow success.
                    raise RuntimeError(f"{len(errors)}/{len(batch)} items failed: {errors[0]!r}")
        except GreenletExit:
            # The run ended (or the user was stopped) with this request unanswered. An ordinary request cut short
            # says nothing and is left out, as Locust does; but one still retrying, or waiting past the request
            # timeout, is a request the server failed: unrecorded, a server that died halfway passed the run.
            waited = time.perf_counter() - start
            if retries or waited > self.timeout:
                why = (
                    f"server unavailable until the end of the run ({retries} retries; last: {_describe(last_error)})"
                    if retries
                    else f"no answer after {waited:.0f} s when the run ended (--request-timeout {self.timeout:g})"
                )
                self._fire(name, start, units, batch, retries, RuntimeError(why))
            raise
        except InferenceServerException as exc:
            exception = RuntimeError(_describe(exc))
        except Exception as exc:  # noqa: BLE001 - every failure must reach Locust's stats, whatever its type
            exception = exc
        finally:
            if outage:
                OUTAGES.end()
        self._fire(name, start, units, batch, retries, exception)

    def _fire(
        self, name: str, start: float, units: int, batch: np.ndarray, retries: int, exception: BaseException | None
    ) -> None:
        self.environment.events.request.fire(
            request_type=self.protocol,
            name=name,
            response_time=(time.perf_counter() - start) * 1000.0,
            # Locust sums this per request; images (faces for the faces model) is the unit we want totals of.
            response_length=units,
            exception=exception,
            context={"batch_size": len(batch), "retries": retries},
        )

    def _unavailable(self, exc: BaseException, model: str) -> bool:
        if isinstance(exc, InferenceServerException):
            error = translate(exc, url=self.url, protocol=self.protocol, model=model)
            # The door's 429 says this load exceeds one caller's share: a finding of the run, not a restart to
            # ride out (retried, it would count as a slow success and hide the limit from the fail ratio).
            return error.retryable and not isinstance(error, RateLimitedError)
        return True  # a refused or reset connection

    def close(self) -> None:
        pass


def _describe(exc: BaseException | None) -> str:
    """An error as Locust's failure table should show it: InferenceServerException's repr is empty, and Locust
    groups failures by repr, so keep its status and message."""
    if isinstance(exc, InferenceServerException):
        return f"[{exc.status()}] {exc.message()}"
    return repr(exc)


class OnceClosedGrpcClient(grpcclient.InferenceServerClient):
    """tritonclient's gRPC client, closed at most once.

    Its ``__del__`` closes again, and in gevent mode every channel close decrements gRPC's channel count: the
    second close, from the garbage collector at interpreter exit, deadlocked in
    ``cygrpc.gevent_decrement_channel_count`` (seen: Locust printed its summary and "Shutting down (exit code 0)",
    then hung, ignoring SIGTERM).
    """

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


class GrpcRequester(TritonRequester):
    protocol = "grpc"

    def __init__(self, environment: Any, url: str, timeout: float) -> None:
        super().__init__(environment, url, timeout)
        self.client = OnceClosedGrpcClient(url)

    def _infer(self, model: str, batch: np.ndarray, outputs: tuple[str, ...]) -> Any:
        dtype = "UINT8" if batch.dtype == np.uint8 else "BYTES"
        inp = grpcclient.InferInput(input_name(model), list(batch.shape), dtype)
        inp.set_data_from_numpy(batch)
        requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
        # No client_timeout (common/triton_workarounds.py); Locust's -t bounds the run.
        return self.client.infer(model, [inp], outputs=requested or None)

    def close(self) -> None:
        self.client.close()


class HttpRequester(TritonRequester):
    protocol = "http"

    def __init__(self, environment: Any, url: str, timeout: float) -> None:
        super().__init__(environment, url, timeout)
        # geventhttpclient underneath: cooperative with Locust's greenlets as is.
        self.client = httpclient.InferenceServerClient(
            url.removeprefix("http://"), connection_timeout=timeout, network_timeout=timeout
        )

    def _infer(self, model: str, batch: np.ndarray, outputs: tuple[str, ...]) -> Any:
        dtype = "UINT8" if batch.dtype == np.uint8 else "BYTES"
        inp = httpclient.InferInput(input_name(model), list(batch.shape), dtype)
        inp.set_data_from_numpy(batch, binary_data=True)
        requested = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
        return self.client.infer(model, [inp], outputs=requested or None)

    def close(self) -> None:
        self.client.close()


_corpus_cache: dict[tuple[str, str], list[Any]] = {}
#: Every requester not closed yet: a user stopped mid-request may skip on_stop, and the quit hook closes the rest
#: while gevent still runs, so nothing is left for the garbage collector at interpreter exit.
_open_requesters: set[TritonRequester] = set()
#: Whether this process ran users (a master, or the parent of --processes workers, has no client to close).
_ran_users: list[bool] = []


class TritonUser(User):
    """Abstract user: one client per simulated user, sending batches in a closed loop."""

    abstract = True
    wait_time = constant(0)
    requester_class: type[TritonRequester] = TritonRequester

    def _url(self, options: Any) -> str:
        raise NotImplementedError

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.model = target_model(options)
        self.batch_size = max(1, options.batch_size)
        key = (options.image_dir, self.model)
        if key not in _corpus_cache:
            _corpus_cache[key] = load_corpus(options.image_dir, self.model)
        self.corpus = _corpus_cache[key]
        self.client = self.requester_class(self.environment, self._url(options), options.request_timeout)
        _open_requesters.add(self.client)
        _ran_users[:] = [True]
        # Users start at different images so a batch is not the same picture N times.
        self._cursor = itertools.count(id(self) % len(self.corpus), self.batch_size)

    def on_stop(self) -> None:
        _open_requesters.discard(self.client)
        self.client.close()

    @task
    def infer(self) -> None:
        self.client.infer(self.model, make_batch(self.corpus, next(self._cursor), self.batch_size, self.model))


class TritonGrpcUser(TritonUser):
    requester_class = GrpcRequester

    def _url(self, options: Any) -> str:
        return options.triton_grpc_url


class TritonHttpUser(TritonUser):
    requester_class = HttpRequester

    def _url(self, options: Any) -> str:
        return options.triton_http_url


@events.init.add_listener
def _clock_now(**_kwargs: Any) -> None:
    # gevent times a timer from its loop's clock, as read when the loop last ran; part of Locust's start-up runs after
    # that without yielding (0.25 s on a quiet machine, seconds on a busy one), and Locust arms its --run-time limit
    # right after this event. So every run was cut short by that much, and one whose start-up outlasted the limit
    # ended at once with no request made (a CI run, three test workers on two cores). Read here, the clock is now
    # (init listeners registered after this file's would still run before the timer is armed, and count against it).
    import gevent

    gevent.get_hub().loop.update_now()


@events.report_to_master.add_listener
def _report_outages(data: dict, **_kwargs: Any) -> None:
    # Sent with every stats report, the last one after the users stopped: the master holds the run to the threshold.
    data["triton_outages"] = OUTAGES.summary()


@events.worker_report.add_listener
def _collect_outages(client_id: str, data: dict, **_kwargs: Any) -> None:
    if "triton_outages" in data:
        _worker_outages[client_id] = data["triton_outages"]


def run_outages(environment: Any) -> dict:
    """The run's unavailability: this process's, or on a master the longest any worker saw (its workers ran side by
    side, so their outages overlap) and the retried requests of them all."""
    if isinstance(environment.runner, MasterRunner):
        seen = list(_worker_outages.values())
        return {"seconds": max((o["seconds"] for o in seen), default=0.0), "retried": sum(o["retried"] for o in seen)}
    return OUTAGES.summary()


@events.quitting.add_listener
def _enforce_thresholds(environment: Any, **_kwargs: Any) -> None:
    # Workers only see their own share of the stats; the master decides for the whole run.
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    options = environment.parsed_options
    if getattr(options, "csv_prefix", None):
        # Locust's CSV writer rewrites its files every CSV_STATS_INTERVAL_SEC and is not asked again at shutdown, so
        # the requests of the last interval were missing from them: among those, the ones recorded as the users
        # stopped (still retrying, below). One more interval lets it write the final numbers.
        import gevent
        from locust import stats

        gevent.sleep(stats.CSV_STATS_INTERVAL_SEC + 0.1)
    total = environment.stats.total
    outage = run_outages(environment)
    if outage["retried"]:
        log.warning(
            "the server was unavailable for %.1f s of the run: %d requests had to retry",
            outage["seconds"],
            outage["retried"],
        )
    if total.num_requests == 0:
        log.error("no request completed: is Triton reachable and the model loaded?")
        environment.process_exit_code = 1
        return
    p95 = total.get_response_time_percentile(0.95)
    problems = []
    if total.fail_ratio > options.max_fail_ratio:
        problems.append(f"fail ratio {total.fail_ratio:.3f} > --max-fail-ratio {options.max_fail_ratio:.3f}")
    if options.max_p95_ms and p95 > options.max_p95_ms:
        problems.append(f"p95 {p95:.0f} ms > --max-p95-ms {options.max_p95_ms:.0f}")
    # Retried requests count as successes (slow ones) in the fail ratio, so a restart, or a server that died
    # halfway and left every user retrying to the end, would pass on what was served around it.
    if outage["retried"] and outage["seconds"] > options.max_unavailable_s:
        problems.append(
            f"server unavailable for {outage['seconds']:.1f} s > --max-unavailable-s {options.max_unavailable_s:g} "
            "(give the outage you accept, e.g. a restart's, to test riding one out)"
        )
    for problem in problems:
        log.error(problem)
    if problems:
        environment.process_exit_code = 1
    else:
        log.info("thresholds met: %d requests, fail ratio %.3f, p95 %.0f ms", total.num_requests, total.fail_ratio, p95)
        # Set, not left None: Locust would otherwise exit with --exit-code-on-error (1) on any single failure,
        # so a --max-fail-ratio above 0 would tolerate nothing.
        environment.process_exit_code = 0
    faces = environment.stats.entries.get((FACES_MODEL, "grpc")) or environment.stats.entries.get((FACES_MODEL, "http"))
    if faces is not None and faces.num_requests:
        seconds = max(faces.last_request_timestamp - faces.start_time, 1e-9)
        log.info(
            "faces: %.1f requests/s, %.1f faces/s (%.2f faces per image)",
            faces.num_requests / seconds,
            faces.total_content_length / seconds,
            faces.total_content_length / faces.num_requests,
        )


@events.quit.add_listener
def _close_clients_and_exit(exit_code: int, **_kwargs: Any) -> None:
    # Fired after the users stopped and the summary was printed, before the CSV files close and sys.exit().
    while _open_requesters:
        _open_requesters.pop().close()
    if _ran_users:
        # Then the process ends without the interpreter's final garbage collection, where gRPC objects' __del__
        # under gevent is where runs used to hang. Registered last, this exit handler runs first; a --processes
        # parent (which waits for its workers in its own exit handler) ran no users and skips it.
        atexit.register(_exit_now, exit_code)


def _exit_now(exit_code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
