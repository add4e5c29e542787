"""The native benchmark's pieces that need no server: the bodies it sends and the load generators' output parsed.

Every fixture below is real output, captured on the development machine (h2load nghttp2/1.52.0, wrk 4.1.0), from
short runs against the crop path through the door, or against a port that refuses, a server that never answers
and one that closes each connection.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor

from common import contract
from loadtest.bench import loadgen, native, wire

H2LOAD_OK = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 68.00 req/s, 27.61KB/s
requests: 136 total, 138 started, 136 done, 136 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 136 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 55.21KB (56538) total, 10.36KB (10608) headers (space savings 37.60%), 37.98KB (38896) data
                     min         max         mean         sd        +/- sd
time for request:    23.13ms     49.98ms     29.35ms      4.82ms    76.47%
time for connect:       95us       128us       111us        23us   100.00%
time to 1st byte:    50.06ms     50.14ms     50.10ms        57us   100.00%
req/s           :      33.97       33.97       33.97        0.00   100.00%
"""  # noqa: E501 - h2load's own line
# The first five rows of that run's --log-file: start (us since epoch), HTTP status, duration (us).
H2LOAD_LOG = """\
1796180777106590\t200\t49817
1796180777106509\t200\t49978
1796180777156535\t200\t36878
1796180777156495\t200\t36956
1796180777193460\t200\t31675
"""
# `--h1` against the HTTP port with a gRPC frame as the body: 400 from the server.
H2LOAD_4XX = """\
starting benchmark...
spawning thread #0: 1 total client(s). 3 total requests
Application protocol: http/1.1
progress: 33% done
progress: 66% done
progress: 100% done

finished in 5.21ms, 575.37 req/s, 129.23KB/s
requests: 3 total, 3 started, 3 done, 0 succeeded, 3 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 3 4xx, 0 5xx
traffic: 690B (690) total, 369B (369) headers (space savings 0.00%), 177B (177) data
                     min         max         mean         sd        +/- sd
time for request:      341us      3.74ms      1.55ms      1.90ms    66.67%
time for connect:      248us       248us       248us         0us   100.00%
time to 1st byte:     4.01ms      4.01ms      4.01ms         0us   100.00%
req/s           :     601.01      601.01      601.01        0.00   100.00%
"""
# A port nobody listens on.
H2LOAD_REFUSED = """\
starting benchmark...
spawning thread #0: 1 total client(s). 3 total requests

finished in 1.93ms, 0.00 req/s, 0B/s
requests: 3 total, 0 started, 0 done, 0 succeeded, 3 failed, 3 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
"""
WRK_OK = """\
Running 2s test @ http://127.0.0.1:18000/v2/models/age_gender_crop/infer
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    26.90ms    2.63ms  33.57ms   68.67%
    Req/Sec    74.30      8.84    80.00     75.00%
  Latency Distribution
     50%   26.31ms
     75%   27.67ms
     90%   31.06ms
     99%   33.46ms
  150 requests in 2.02s, 170.80KB read
Requests/sec:     74.17
Transfer/sec:     84.46KB
"""
# The body with a wrong Inference-Header-Content-Length: every answer a 400.
WRK_NON_2XX = """\
Running 1s test @ http://127.0.0.1:18000/v2/models/age_gender_crop/infer
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.09ms    1.53ms  11.04ms   84.47%
    Req/Sec     4.10k     4.55k   14.86k    81.82%
  Latency Distribution
     50%  490.00us
     75%    1.39ms
     90%    3.50ms
     99%    6.37ms
  4491 requests in 1.10s, 1.14MB read
  Non-2xx or 3xx responses: 4491
Requests/sec:   4080.87
Transfer/sec:      1.03MB
"""
# A server that answers 200 and closes each connection.
WRK_SOCKET_ERRORS = """\
Running 1s test @ http://127.0.0.1:18557/v2/models/age_gender_crop/infer
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   348.96us  831.63us   7.96ms   91.09%
    Req/Sec     7.82k     1.85k    9.83k    70.00%
  Latency Distribution
     50%   84.00us
     75%  136.00us
     90%    0.94ms
     99%    4.11ms
  7778 requests in 1.00s, 303.83KB read
  Socket errors: connect 0, read 7778, write 0, timeout 0
Requests/sec:   7774.16
Transfer/sec:    303.68KB
"""
# A server that accepts and never answers.
WRK_NOTHING = """\
Running 3s test @ http://127.0.0.1:18556/v2/models/age_gender_crop/infer
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 3.01s, 0.00B read
Requests/sec:      0.00
Transfer/sec:       0.00B
"""
# Lines of Triton 2.51's metrics page (HELP/TYPE lines and other models' rows as served).
METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="age_gender_crop",version="1"} 464
nv_inference_request_success{model="preprocess_crop",version="1"} 464
nv_inference_request_success{model="age_gender",version="1"} 0
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="age_gender_crop",reason="OTHER",version="1"} 2
nv_inference_request_failure{model="age_gender_crop",reason="BACKEND",version="1"} 3
nv_inference_request_failure{model="preprocess_crop",reason="BACKEND",version="1"} 7
nv_inference_request_failure{model="age_gender_crop",reason="CANCELED",version="1"} 0
"""


def _meta() -> dict:
    """A run's header, as ``native.write_markdown`` takes it."""
    return {
        "date": "d",
        "host": "h",
        "cpus": 2,
        "cpu_model": "c",
        "load_average_at_start": [0.0],
        "commit": "x",
        "uncommitted_changes": False,
        "config_name": "cpu",
        "duration": 10,
        "warmup": 3,
        "h2load": "h",
        "wrk": "w",
    }


def test_grpc_frame_round_trips():
    image = native.crop_jpeg()
    frame = wire.grpc_frame(contract.CROP_ENSEMBLE, image)
    assert frame[0] == 0 and int.from_bytes(frame[1:5], "big") == len(frame) - 5
    request = wire.parse_grpc_frame(frame)
    assert request.model_name == contract.CROP_ENSEMBLE
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == (contract.IMAGE_INPUT, "BYTES", [1, 1])
    assert [o.name for o in request.outputs] == list(wire.OUTPUTS)
    (raw,) = request.raw_input_contents
    assert list(deserialize_bytes_tensor(raw)) == [image]  # Triton's own BYTES layout, read by tritonclient
    with pytest.raises(ValueError):
        wire.parse_grpc_frame(frame[:-1])  # the length prefix no longer matches


def test_faces_is_sent_as_one_image_without_a_batch_dimension():
    request = wire.parse_grpc_frame(wire.faces_grpc_frame(b"\xff\xd8 not really a jpeg"))
    assert request.model_name == contract.FACES_MODEL
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == (contract.IMAGE_INPUT, "BYTES", [1])
    assert not request.outputs  # every output of faces


def test_http_body_splits_where_the_header_says():
    image = native.portrait_png()
    body, header_length = wire.http_body(image)
    header = json.loads(body[:header_length])
    (tensor,) = header["inputs"]
    assert tensor["shape"] == [1, 1] and tensor["parameters"]["binary_data_size"] == len(body) - header_length
    assert list(deserialize_bytes_tensor(body[header_length:])) == [image]


def test_inputs_are_the_sizes_the_issue_names():
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(native.crop_jpeg())).size == (200, 200)
    png = Image.open(io.BytesIO(native.portrait_png()))
    assert (png.format, png.size) == ("PNG", (512, 512))


def test_h2load_parsed():
    run = loadgen.parse_h2load(H2LOAD_OK, H2LOAD_LOG, concurrency=2)
    assert (run.requests, run.req_per_s, run.duration_s, run.concurrency) == (136, 68.0, 2.0, 2)
    assert run.mean_ms == pytest.approx(29.35)
    durations_ms = [49.817, 49.978, 36.878, 36.956, 31.675]
    assert run.p50_ms == pytest.approx(36.956)
    assert run.p99_ms == pytest.approx(49.817 + 0.96 * (49.978 - 49.817))  # numpy's linear interpolation
    assert run.p99_ms == pytest.approx(np.percentile(durations_ms, 99))
    # 136 answers of 286 bytes each: every success carried a message.
    assert run.data_bytes == 38896 == 136 * 286
    loadgen.check_grpc_answers(run, 286)
    # Five of them refusals in the trailers (an HTTP 200 with no message), which Triton never counted: caught.
    refused = loadgen.parse_h2load(H2LOAD_OK.replace("(38896) data", f"({131 * 286}) data"), H2LOAD_LOG)
    with pytest.raises(loadgen.LoadError, match="5 were refusals"):
        loadgen.check_grpc_answers(refused, 286)


def test_h2load_run_cut_short_by_the_door_counts_its_open_span():
    """nginx closes a connection after keepalive_requests and h2load does not reconnect: a c=1 run that did its
    requests in part of the window is rated over the span its requests took, not the window."""
    text = (
        H2LOAD_OK.replace("finished in 2.00s, 68.00 req/s", "finished in 10.00s, 0.50 req/s")
        .replace("136 total, 138 started, 136 done, 136 succeeded", "5 total, 5 started, 5 done, 5 succeeded")
        .replace("136 2xx", "5 2xx")
    )
    run = loadgen.parse_h2load(text, H2LOAD_LOG, concurrency=1)
    span = (1796180777193460 + 31675 - 1796180777106509) / 1e6  # the last answer's end - the first request's start
    assert run.open_s == pytest.approx(span) and run.req_per_s == pytest.approx(5 / span)
    assert run.duration_s == 10.0 and run.requests == 5
    # Requests over (nearly) the whole window: h2load's own rate stands.
    whole = loadgen.parse_h2load(text.replace("finished in 10.00s", "finished in 0.12s"), H2LOAD_LOG, concurrency=1)
    assert whole.open_s is None and whole.req_per_s == 0.5
    # A partial log (the five first rows of 136) says nothing about the span.
    assert loadgen.parse_h2load(H2LOAD_OK, H2LOAD_LOG, concurrency=2).open_s is None


@pytest.mark.parametrize(
    ("text", "says"), [(H2LOAD_4XX, "3 failed, 0 errored, 0 timed out, 3 non-2xx"), (H2LOAD_REFUSED, "3 errored")]
)
def test_h2load_failures_raise(text, says):
    with pytest.raises(loadgen.LoadError, match=says):
        loadgen.parse_h2load(text)


def test_h2load_without_its_summary_raises():
    with pytest.raises(loadgen.LoadError, match="no line matching"):
        loadgen.parse_h2load(H2LOAD_OK.split("finished in")[0])


def test_wrk_parsed():
    run = loadgen.parse_wrk(WRK_OK, concurrency=2)
    assert (run.requests, run.req_per_s, run.duration_s) == (150, 74.17, 2.02)
    assert (run.mean_ms, run.p50_ms, run.p99_ms) == pytest.approx((26.90, 26.31, 33.46))


def test_wrk_units():
    assert loadgen._ms("490.00us") == pytest.approx(0.49)
    assert loadgen._ms("1.02s") == pytest.approx(1020.0)
    assert loadgen._ms("2.50m") == pytest.approx(150_000.0)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (WRK_NON_2XX, "4491 non-2xx answers of 4491"),
        (WRK_SOCKET_ERRORS, "read 7778"),
        (WRK_NOTHING, "no request completed"),
    ],
)
def test_wrk_failures_raise(text, says):
    with pytest.raises(loadgen.LoadError, match=says):
        loadgen.parse_wrk(text)


def test_wrk_script_posts_the_body_with_its_header_length(tmp_path):
    script = loadgen.wrk_script(tmp_path / "crop.http", 517)
    assert 'wrk.method = "POST"' in script
    assert f'wrk.headers["{wire.HEADER_LENGTH}"] = "517"' in script
    assert f"io.open([==[{tmp_path / 'crop.http'}]==]" in script


def test_triton_counts_are_the_models_own():
    assert native.parse_counts(METRICS, contract.CROP_ENSEMBLE) == (464, 5)
    assert native.parse_counts(METRICS, contract.DETECT_ENSEMBLE) == (0, 0)


def test_an_error_answer_is_not_an_estimate():
    ok = {"error": "", "face_found": True, "age": 78.6, "gender": "male"}
    assert native.check_estimate(ok, "crop") is ok
    with pytest.raises(RuntimeError, match="not a recognised image"):
        native.check_estimate({**ok, "error": "The file is not a recognised image"}, "crop")
    with pytest.raises(RuntimeError, match="no estimate"):
        native.check_estimate({**ok, "face_found": False, "age": float("nan")}, "crop")


def test_targets_are_ratios_of_this_run():
    reference = {"b64_img_s": 200.0, "b1_ms": 10.0}
    scenarios = [
        native.Scenario("grpc", "crop", contract.CROP_ENSEMBLE, "crop", 16, run={"req_per_s": 170.0}),
        native.Scenario("grpc", "crop", contract.CROP_ENSEMBLE, "crop", 1, run={"mean_ms": 25.0}),
        native.Scenario("grpc", "detection", contract.DETECT_ENSEMBLE, "png", 8, run={"req_per_s": 40.0}),
        native.Scenario("http", "crop", contract.CROP_ENSEMBLE, "crop", 16, run={"req_per_s": 999.0}),
    ]
    values = native.targets(scenarios, reference)
    expected = {"crop_c16_vs_inprocess": 0.85, "crop_c1_latency_vs_inprocess": 2.5, "detect_c8": 40.0}
    assert values == pytest.approx({**expected, "crop_c16_vs_beside": None, "crop_c1_latency_vs_beside": None})
    # Each target scenario's own reference, measured right before it, gives the same ratios against it.
    assert [s.concurrency for s in scenarios if native.is_target(s)] == [16, 1]
    scenarios[0].reference, scenarios[1].reference = {"b64_img_s": 170.0}, {"b1_ms": 12.5}
    values = native.targets(scenarios, reference)
    assert values == pytest.approx({**expected, "crop_c16_vs_beside": 1.0, "crop_c1_latency_vs_beside": 2.0})
    scenarios[0].error = "LoadError: ..."  # a failed scenario gives no number rather than a wrong one
    values = native.targets(scenarios, reference)
    assert values["crop_c16_vs_inprocess"] is None and values["crop_c16_vs_beside"] is None


def test_the_reference_is_bracketed_and_its_drift_flagged(tmp_path):
    before = {"models": {}, "b64_img_s": 200.0, "b1_ms": 6.0, "b1_img_s": 166.7}
    after = {"models": {}, "b64_img_s": 180.0, "b1_ms": 6.6, "b1_img_s": 151.5}
    ref = native.bracket(before, after)
    assert (ref["b64_img_s"], ref["b1_ms"]) == pytest.approx((190.0, 6.3))
    assert ref["b1_img_s"] == pytest.approx(1000 / 6.3)
    assert ref["runs"] == [before, after]
    assert ref["drift"] == pytest.approx(0.105, abs=1e-3) and not ref["drifted"]  # b64: 20/190, b1: 0.6/6.3
    # The ratios are taken against the mean: 150 req/s over 190 img/s.
    c16 = native.Scenario("grpc", "crop", contract.CROP_ENSEMBLE, "crop", 16, run={"req_per_s": 150.0})
    assert native.targets([c16], ref)["crop_c16_vs_inprocess"] == pytest.approx(150 / 190)
    # A machine that halved its speed during the run is said to have done so.
    assert native.bracket(before, {**after, "b64_img_s": 100.0})["drifted"]
    # ... in the report's targets too, not only beside the reference.
    meta = _meta()
    drifted = {**native.bracket(before, {**after, "b64_img_s": 100.0}), "runtime": "openvino", "threads": 2}
    for reference, says in ((drifted, True), ({**ref, "runtime": "openvino", "threads": 2}, False)):
        native.write_markdown(tmp_path / "native.md", meta, reference, [c16], native.targets([c16], reference))
        text = (tmp_path / "native.md").read_text()
        assert ("the reference drifted" in text) is says and ("speed moved during this run" in text) is says
    # A failed scenario's row gives no number at all (its tool counted answers the server got wrong).
    failed = native.Scenario(
        "grpc",
        "crop",
        contract.CROP_ENSEMBLE,
        "crop",
        16,
        run={"req_per_s": 150.0, "mean_ms": 58.0, "requests": 9},
        error="LoadError: ...",
        cpu_s={"triton": 1.0, "door": 0.1, "gate": 0.2},
        wall_s=10.0,
    )
    reference = {**ref, "runtime": "openvino", "threads": 2}
    native.write_markdown(tmp_path / "native.md", meta, reference, [failed], native.targets([failed], reference))
    (row,) = [line for line in (tmp_path / "native.md").read_text().splitlines() if "**failed**" in line]
    assert "150" not in row and "58" not in row and row.endswith("| **failed** |" + " - |" * 9)
    # The report says which vector instructions the CNN kernels had, and when they were held below the CPU's.
    assert "CPUs (c), load" in text
    capped = {**meta, "vector_isa": "AVX-512", "isa_cap": "AVX2"}
    native.write_markdown(tmp_path / "native.md", capped, reference, [c16], native.targets([c16], reference))
    assert (
        "CPUs (c, AVX-512; the CNN kernels held to AVX2 by ONEDNN_MAX_CPU_ISA)" in (tmp_path / "native.md").read_text()
    )
    flags = "processor : 0\nflags : fpu sse2 avx avx2 fma\n"
    assert native.vector_isa(flags) == "AVX2" and native.vector_isa(flags.replace("avx2", "avx512f avx2")) == "AVX-512"
    assert native.vector_isa("") == "no AVX2"
    # A c=1 run the door cut short (keepalive_requests): its rate and cores over the span, said under the table.
    cut = native.Scenario(
        "grpc",
        "crop",
        contract.CROP_ENSEMBLE,
        "crop",
        1,
        run={"req_per_s": 125.0, "mean_ms": 7.9, "p50_ms": 7.8, "p99_ms": 9.0, "requests": 1000, "open_s": 8.0},
        cpu_s={"triton": 8.0, "door": 0.5, "gate": 1.5},
        wall_s=10.0,
    )
    native.write_markdown(tmp_path / "native.md", meta, reference, [cut], native.targets([cut], reference))
    text = (tmp_path / "native.md").read_text()
    (row,) = [line for line in text.splitlines() if line.startswith("| gRPC (h2load) | crop")]
    assert "| 125.0* |" in row and "| 1.25 |" in row  # 10 CPU-s over the 8 s the connection was open
    assert "after 1,000 requests each" in text and "8.0 s the connections were open" in text
    # Without a second run (--no-reference-after) the reference is the first, and no drift is claimed.
    alone = native.bracket(before, None)
    assert (alone["b64_img_s"], alone["drift"], alone["drifted"]) == (200.0, None, None)


def _stats(**models) -> dict:
    """A ``/v2/models/stats`` answer in Triton 2.51's shape (every field the benchmark reads; counts and ns)."""
    rows = []
    for name, (requests, batches, ns) in models.items():
        stages = dict(zip(native.STAGES, ns, strict=True))
        rows.append(
            {
                "name": name,
                "version": "1",
                "execution_count": batches,
                "inference_count": requests,
                "inference_stats": {
                    "success": {"count": requests, "ns": sum(ns)},
                    "fail": {"count": 0, "ns": 0},
                    **{stage: {"count": requests, "ns": v} for stage, v in stages.items()},
                },
            }
        )
    return {"model_stats": rows}


def test_step_times_are_per_request_deltas_of_the_window():
    before = _stats(
        age=(100, 20, (1e6, 2e6, 300e6, 4e6)), postprocess=(100, 50, (0, 0, 10e6, 0)), faces=(3, 3, (0,) * 4)
    )
    after = _stats(
        age=(300, 40, (41e6, 2e6 + 200e3, 300e6 + 1_400e6, 4e6 + 20e6)),
        postprocess=(300, 90, (0, 0, 10e6 + 100e6, 0)),
        faces=(3, 3, (0,) * 4),  # served nothing in the window: no row
        preprocess_crop=(200, 60, (2e6, 0, 300e6, 0)),  # loaded during the window: counted from zero
    )
    steps = native.step_times(before, after)
    assert set(steps) == {"age", "postprocess", "preprocess_crop"}
    assert steps["age"] == {
        "requests": 200,
        "batches": 20,
        "queue_ms": 0.2,
        "compute_input_ms": 0.001,
        "compute_infer_ms": 7.0,
        "compute_output_ms": 0.1,
    }
    assert steps["postprocess"]["compute_infer_ms"] == 0.5 and steps["preprocess_crop"]["compute_infer_ms"] == 1.5
    table = "\n".join(native.steps_table([native.Scenario("grpc", "crop", "age_gender_crop", "crop", 16, steps=steps)]))
    assert "| grpc | crop | 16 | age | 200 | 10.0 | 0.20 | 0.00 | 7.00 | 0.10 |" in table
    assert native.steps_table([native.Scenario("grpc", "crop", "age_gender_crop", "crop", 1)]) == []


@pytest.mark.integration
def test_triton_statistics_are_read_with_the_admin_key(triton_tiny):
    # The statistics API is an admin API: the launcher sends its admin key only where asked (the bench broke when the
    # launcher stopped sending it with every call to Triton's port).
    stats = native.model_stats(triton_tiny)
    assert {row["name"] for row in stats["model_stats"]} >= {"age", "gender", "age_gender_crop"}


def test_the_reference_runs_the_cnns_at_the_precision_their_configs_serve(tiny_repo, tmp_path):
    """The yardstick is the served CNNs as served: each config's inference_precision, resolved for this CPU."""
    import shutil

    from loadtest.bench import openvino_reference
    from serving.pipeline.backends.openvino_savedmodel import ov_runtime

    # The tiny models have no model.int8: where auto picks int8 (no native bf16), they are served, and measured, in f32.
    auto = {"int8": "f32"}.get(ov_runtime.resolve_precision("auto"), ov_runtime.resolve_precision("auto"))
    got = openvino_reference.measure(tiny_repo, 1, 0.2)
    assert got["precision"] == {task: auto for task in contract.TASK_MODELS}
    assert got["b64_img_s"] > 0 and got["b1_ms"] > 0
    # A deployment that asks for f32 is measured in f32.
    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo, symlinks=True)
    config = repo / contract.AGE_MODEL / "configs" / "cpu.pbtxt"
    config.write_text(config.read_text().replace('string_value: "auto"', 'string_value: "f32"'))
    got = openvino_reference.measure(repo, 1, 0.2)
    assert got["precision"][contract.AGE_MODEL] == "f32" and got["precision"][contract.GENDER_MODEL] == auto


def test_a_load_generator_that_is_not_installed_is_named_so_in_the_report():
    # The soak benchmark needs h2load alone, and reads the machine as the native benchmark does: a missing wrk is a
    # line in its report, not a crash.
    assert native.tool_version(["no-such-load-generator-here"]) == "not installed"
    assert native.tool_version([sys.executable, "--version"]).startswith("Python 3.")


def test_a_run_counts_only_if_triton_served_every_request_the_tool_counted():
    run = loadgen.Run(
        tool="h2load", concurrency=2, duration_s=2.0, requests=136, req_per_s=68.0, mean_ms=29.4,
        p50_ms=29.0, p99_ms=45.0, data_bytes=38896,
    )  # fmt: skip
    native.check_served((1000, 3), (1136, 3), run, "age_gender_crop")  # the failures before the window are not its own
    with pytest.raises(loadgen.LoadError, match="Triton served 130 and failed 0"):
        native.check_served((1000, 3), (1130, 3), run, "age_gender_crop")  # six gRPC errors counted as successes
    with pytest.raises(loadgen.LoadError, match="failed 1 requests of faces"):
        native.check_served((1000, 3), (1136, 4), run, "faces")


def test_the_detection_target_is_only_read_from_a_c8_run(tmp_path):
    # A run at --detect-concurrency 1 printed its c=1 rate as the "gRPC c=8" target.
    reference = {"b64_img_s": 200.0, "b1_ms": 10.0}
    c1 = native.Scenario("grpc", "detection", contract.DETECT_ENSEMBLE, "png", 1, run={"req_per_s": 30.0})
    assert native.targets([c1], reference)["detect_c8"] is None
    c8 = native.Scenario("grpc", "detection", contract.DETECT_ENSEMBLE, "png", 8, run={"req_per_s": 75.0})
    assert native.targets([c1, c8], reference)["detect_c8"] == 75.0
    # The report says the target was not measured, rather than leaving a dash that reads like a failed run.
    before = {"models": {}, "b64_img_s": 200.0, "b1_ms": 6.0, "b1_img_s": 166.7}
    ref = {**native.bracket(before, None), "runtime": "openvino", "threads": 2}
    meta = _meta()
    native.write_markdown(tmp_path / "native.md", meta, ref, [c1], native.targets([c1], ref))
    (row,) = [line for line in (tmp_path / "native.md").read_text().splitlines() if "gRPC c=8 |" in line]
    assert "not measured (no detection run at c=8)" in row and "30" not in row
