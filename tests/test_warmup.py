"""The Python models' warm-up requests: the committed files are what serving/ops/warmup.py makes, they go
the whole way through the crop path (no per-item error), and every config variant names them.

That Triton accepts them is checked by every real-Triton test: a warm-up that fails fails the model's load.
"""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import deserialize_bytes_tensor

from common import contract, spec
from serving.ops import warmup
from serving.pipeline.crops import crop_aligned
from serving.pipeline.decode import DecodeLimits
from tests.test_configs import config

VARIANTS = ("config.pbtxt", "configs/cpu.pbtxt")


@pytest.mark.parametrize("name", sorted(warmup.FILES))
def test_committed_files_are_what_the_generator_makes(name):
    committed = (warmup.FOLDER / name).read_bytes()
    assert committed == warmup.warmup_file(warmup.FILES[name]), (
        "rerun `python -m serving.ops.warmup` and commit model_repository/preprocess_crop/warmup/"
    )


@pytest.mark.parametrize("name", sorted(warmup.FILES))
def test_each_file_is_one_upload_that_the_crop_path_serves(name):
    (upload,) = deserialize_bytes_tensor((warmup.FOLDER / name).read_bytes())  # one element, as Triton reads it
    params = {k: v.string_value for k, v in config(contract.PREPROCESS_CROP_MODEL).parameters.items()}
    assert upload.startswith({"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n"}[warmup.FILES[name]])
    decoded = DecodeLimits.from_params(params).decode(upload)
    assert decoded.image.size == (warmup.SIDE, warmup.SIDE)
    face = crop_aligned(decoded.image)
    for task, crop in face.crops.items():
        assert crop.shape == (spec.image_size(task), spec.image_size(task), 3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_crop_preprocessing_warms_each_upload_format(variant):
    warm = config(contract.PREPROCESS_CROP_MODEL, variant).model_warmup
    files = sorted(w.inputs[contract.IMAGE_INPUT].input_data_file for w in warm)
    assert files == sorted(warmup.FILES)
    for w in warm:
        assert w.batch_size == 1
        value = w.inputs[contract.IMAGE_INPUT]
        assert value.data_type == mc.TYPE_STRING and list(value.dims) == [1]


@pytest.mark.parametrize("variant", VARIANTS)
def test_postprocess_warm_up_feeds_every_input_its_declared_type(variant):
    cfg = config("postprocess", variant)
    (warm,) = cfg.model_warmup
    declared = {i.name: (i.data_type, list(i.dims)) for i in cfg.input}
    assert {k: (v.data_type, list(v.dims)) for k, v in warm.inputs.items()} == declared
    assert all(v.zero_data for v in warm.inputs.values())
