"""The committed Triton configs parse, agree between GPU and CPU variants, and fit the models and ensembles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from common import contract, spec
from serving.pipeline.backends.openvino_savedmodel import ov_runtime

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
MODELS = sorted(p.parent.name for p in REPOSITORY.glob("*/config.pbtxt"))
ENSEMBLES = (contract.DETECT_ENSEMBLE, contract.CROP_ENSEMBLE)
TF_TO_TRITON = {"uint8": mc.TYPE_UINT8, "float32": mc.TYPE_FP32}


def load(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def config(model: str, variant: str = "config.pbtxt") -> mc.ModelConfig:
    """The config Triton reads for ``variant``: ``--model-config-name=cpu`` falls back to config.pbtxt when the
    model has no configs/cpu.pbtxt (the ensembles, which run no code; tests/test_launch.py relies on it too)."""
    path = REPOSITORY / model / variant
    return load(path if path.exists() else REPOSITORY / model / "config.pbtxt")


def test_only_models_that_differ_on_cpu_have_a_cpu_config():
    # One truth per config: a configs/cpu.pbtxt identical to config.pbtxt would be a copy to keep in step.
    for model in MODELS:
        cpu = REPOSITORY / model / "configs" / "cpu.pbtxt"
        if model in ENSEMBLES:
            assert not cpu.exists(), f"{model}: ensembles run no code, so CPU and GPU share config.pbtxt"
        else:
            assert cpu.read_text() != (REPOSITORY / model / "config.pbtxt").read_text(), model


def tensors(items) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in items}


def test_expected_models_present():
    assert set(MODELS) == {
        contract.PREPROCESS_MODEL,
        contract.PREPROCESS_CROP_MODEL,
        *contract.TASK_MODELS,
        contract.POSTPROCESS_MODEL,
        contract.FACES_MODEL,
        *ENSEMBLES,
    }


@pytest.mark.parametrize("model", [m for m in MODELS if m not in ENSEMBLES])  # ensembles have one file (above)
def test_both_variants_parse_and_agree(model):
    prod, cpu = config(model), config(model, "configs/cpu.pbtxt")
    assert cpu.SerializeToString() != prod.SerializeToString()  # two files really were read
    assert prod.name == cpu.name == model
    assert tensors(prod.input) == tensors(cpu.input)
    assert tensors(prod.output) == tensors(cpu.output)
    # The CPU variant may batch smaller (the CNNs, for memory: configs/cpu.pbtxt), never larger, and not below
    # what the ensembles and `faces` send it in one request (test_ensemble_wiring, test_faces_contract).
    assert 0 < cpu.max_batch_size <= prod.max_batch_size or prod.max_batch_size == cpu.max_batch_size == 0
    assert prod.max_batch_size > 0 or model == contract.FACES_MODEL  # faces: one image per request, N faces out
    assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in cpu.instance_group)


@pytest.mark.parametrize("task", contract.TASK_MODELS)
def test_model_configs_run_the_savedmodel(task):
    prod, cpu = config(task), config(task, "configs/cpu.pbtxt")
    assert prod.platform == "tensorflow_savedmodel"
    assert [g.kind for g in prod.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    # The CPU variant runs the same SavedModel through our Python-based backend (serving/pipeline/backends/).
    assert cpu.backend == "openvino_savedmodel" and cpu.runtime == "model.py"
    assert (ROOT / "serving" / "pipeline" / "backends" / cpu.backend / "model.py").is_file()
    # Ready means warm: every batch shape OpenVINO runs at a preferred size (larger ones run in slices of
    # max_infer_batch), and single requests, is run once before ready; the largest it will ever run is among
    # them, so memory after warm-up is the stub's memory under load (its activations grow with the batch).
    cap = int(cpu.parameters["max_infer_batch"].string_value)
    assert 0 < cap <= cpu.max_batch_size
    warm = {w.batch_size for w in cpu.model_warmup}
    assert warm >= {1, cap, *(min(b, cap) for b in cpu.dynamic_batching.preferred_batch_size)}
    assert max(warm) == cap
    assert all(set(w.inputs) == {i.name for i in cpu.input} for w in cpu.model_warmup)
    # The precision is the config's choice, one the backend knows (a typo would fail the model's load), and bf16
    # is never asked for outright: it is slower than f32 on CPUs without native bf16 (ov_runtime.PRECISIONS says by how
    # much).
    precision = cpu.parameters["inference_precision"].string_value
    assert precision in ov_runtime.PRECISIONS and precision != "bf16"
    # The publisher and the benchmarks read it without protobuf (ov_runtime.configured_precision): the same value.
    text = (REPOSITORY / task / "configs" / "cpu.pbtxt").read_text()
    assert ov_runtime.configured_precision(text) == precision
    # Production too: TensorFlow's first call at each batch shape builds its kernels, so single requests and every
    # preferred size run before ready.
    warm = {w.batch_size for w in prod.model_warmup}
    assert warm >= {1, *prod.dynamic_batching.preferred_batch_size} and max(warm) <= prod.max_batch_size
    assert all(set(w.inputs) == {i.name for i in prod.input} for w in prod.model_warmup)
    for c in (prod, cpu):
        # The newest version alone: what serving.ops.rollout restores when it unpins a rollback.
        assert c.version_policy.WhichOneof("policy_choice") == "latest" and c.version_policy.latest.num_versions == 1
        assert c.dynamic_batching.preferred_batch_size and c.dynamic_batching.max_queue_delay_microseconds > 0


@pytest.mark.parametrize("task", contract.TASK_MODELS)
def test_configs_match_savedmodel_signature(task, tiny_repo):
    import tensorflow as tf

    signature = tf.saved_model.load(str(tiny_repo / task / "1" / "model.savedmodel")).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs

    def as_triton(specs) -> dict:
        assert all(s.shape[0] is None for s in specs.values()), "the batch dimension must be free"
        return {name: (TF_TO_TRITON[s.dtype.name], tuple(s.shape[1:])) for name, s in specs.items()}

    prod = config(task)
    assert as_triton(inputs) == tensors(prod.input)
    assert as_triton(outputs) == tensors(prod.output)
    # Names from the contract, in config order (age: the estimate, then its interval's low and high end).
    assert list(tensors(prod.output)) == list(contract.TASK_MODEL_OUTPUTS[task])
    assert set(outputs) == set(contract.TASK_MODEL_OUTPUTS[task])
    # The SavedModel and the OpenVINO IR training.export makes from it (the CPU backend's ir.py).
    assert sorted(p.name for p in (tiny_repo / task / "1").iterdir()) == ["model.openvino", "model.savedmodel"]


@pytest.mark.parametrize("task", contract.TASK_MODELS)
def test_each_cnn_gets_the_crop_of_its_own_size(task):
    # The two CNNs may take different sizes (common/spec.py IMAGE_SIZES): preprocessing makes one crop per model,
    # each ensemble hands each model its own, and the served SavedModel takes that size.
    want = (mc.TYPE_UINT8, (spec.image_size(task), spec.image_size(task), 3))
    face = contract.PREPROCESS_FACES[task]
    for variant in ("config.pbtxt", "configs/cpu.pbtxt"):
        assert tensors(config(task, variant).input) == {contract.CROP_INPUT: want}
        for pre in (contract.PREPROCESS_MODEL, contract.PREPROCESS_CROP_MODEL):
            assert tensors(config(pre, variant).output)[face] == want, (pre, variant)
        warm = config(task, variant).model_warmup
        assert all(tuple(w.inputs[contract.CROP_INPUT].dims) == want[1] for w in warm), variant
    for name in ENSEMBLES:
        (step,) = [s for s in config(name).ensemble_scheduling.step if s.model_name == task]
        assert dict(step.input_map) == {contract.CROP_INPUT: face}, name

    import tensorflow as tf

    from training.export import SAVEDMODEL, latest

    served = tf.saved_model.load(str(latest(REPOSITORY, task) / SAVEDMODEL)).signatures["serving_default"]
    assert tuple(served.structured_input_signature[1][spec.INPUT_NAME].shape[1:]) == want[1]


def test_preprocess_crop_shares_code_and_skips_detection():
    link = REPOSITORY / contract.PREPROCESS_CROP_MODEL / "1" / "model.py"
    assert link.is_symlink() and not Path(link.readlink()).is_absolute()
    assert link.resolve() == (REPOSITORY / contract.PREPROCESS_MODEL / "1" / "model.py").resolve()
    for variant in ("config.pbtxt", "configs/cpu.pbtxt"):
        assert config(contract.PREPROCESS_CROP_MODEL, variant).parameters["detect"].string_value == "false"
        assert config(contract.PREPROCESS_MODEL, variant).parameters["detect"].string_value == "true"


@pytest.mark.parametrize("name", ENSEMBLES)
def test_ensemble_wiring(name):
    ens = config(name)
    assert ens.platform == "ensemble"
    assert [p.name for p in (REPOSITORY / name / "1").iterdir()] == [".gitkeep"]
    available = tensors(ens.input)  # ensemble tensor -> (dtype, dims) once produced
    for step in ens.ensemble_scheduling.step:
        assert (REPOSITORY / step.model_name / "config.pbtxt").exists(), f"{name}: no model {step.model_name}"
        model = config(step.model_name)
        cpu = config(step.model_name, "configs/cpu.pbtxt")
        assert ens.max_batch_size <= min(model.max_batch_size, cpu.max_batch_size)
        model_in, model_out = tensors(model.input), tensors(model.output)
        assert set(step.input_map) == set(model_in), f"{name}/{step.model_name}: inputs not all mapped"
        for key, tensor in step.input_map.items():
            assert available.get(tensor) == model_in[key], f"{name}/{step.model_name}: {tensor} -> {key}"
        for key, tensor in step.output_map.items():
            assert key in model_out and tensor not in available, f"{name}/{step.model_name}: output {key}"
            available[tensor] = model_out[key]
    for name_, declared in tensors(ens.output).items():
        assert available.get(name_) == declared, f"{name}: output {name_} not produced as declared"


@pytest.mark.parametrize("name", ENSEMBLES)
def test_every_cnn_output_reaches_the_ensemble_output_of_its_name(name):
    # Dtypes and dims alone would let age_low and age_high (both FP32 [1]) be wired the wrong way round.
    steps = {s.model_name: s for s in config(name).ensemble_scheduling.step}
    post = steps[contract.POSTPROCESS_MODEL]
    for task in contract.TASK_MODELS:
        for output in contract.TASK_MODEL_OUTPUTS[task]:
            assert output in steps[task].output_map, f"{name}: {task} output {output} not used"
            assert post.input_map[output] == steps[task].output_map[output], f"{name}: {output} -> postprocess"
            assert post.output_map[output] == output, f"{name}: postprocess {output} -> ensemble output"


@pytest.mark.parametrize("name", ENSEMBLES)
def test_what_postprocess_does_not_change_goes_from_preprocess_to_the_ensemble_output(name):
    # Box, detection score, face_found and error skip postprocess (a copy each way through its stub for nothing),
    # and face_found and error still reach it: the estimates are blanked by the very tensors the caller gets.
    steps = config(name).ensemble_scheduling.step
    pre, post = steps[0], {s.model_name: s for s in steps}[contract.POSTPROCESS_MODEL]
    unchanged = set(contract.PREPROCESS_OUTPUTS) - set(contract.PREPROCESS_FACES.values())
    assert unchanged == set(contract.ENSEMBLE_OUTPUTS) - set(contract.POSTPROCESS_OUTPUTS)
    for output in unchanged:
        assert pre.output_map[output] == output, f"{name}: preprocess {output} -> ensemble output"
        assert output not in post.output_map, f"{name}: postprocess would produce {output} a second time"
    for output in (contract.ENSEMBLE_FOUND, contract.ENSEMBLE_ERROR):
        assert post.input_map[output] == pre.output_map[output], f"{name}: {output} -> postprocess"


@pytest.mark.parametrize("name", ENSEMBLES)
def test_ensemble_steps_map_each_tensor_once(name):
    # Protobuf keeps the last of repeated map keys without a word, so a doubled line would parse as if fine.
    for step in (REPOSITORY / name / "config.pbtxt").read_text().split("model_name:")[1:]:
        keys = re.findall(r'(input_map|output_map) \{ key: "([^"]+)"', step)
        assert keys and len(keys) == len(set(keys)), f"{name}: repeated map keys in {step.split()[0]}"


def test_ensembles_differ_only_in_preprocess():
    steps = {e: [s.model_name for s in config(e).ensemble_scheduling.step] for e in ENSEMBLES}
    tasks = list(contract.TASK_MODELS)
    assert steps[contract.DETECT_ENSEMBLE] == [contract.PREPROCESS_MODEL, *tasks, contract.POSTPROCESS_MODEL]
    assert steps[contract.CROP_ENSEMBLE] == [contract.PREPROCESS_CROP_MODEL, *tasks, contract.POSTPROCESS_MODEL]
    pre, pre_crop = config(contract.PREPROCESS_MODEL), config(contract.PREPROCESS_CROP_MODEL)
    assert tensors(pre.output) == tensors(pre_crop.output)


@pytest.mark.parametrize("variant", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_ensemble_tensor_names_match_the_contract(variant):
    # Order matters where code zips names with positions: preprocess builds its outputs from one tuple per item.
    pre = config(contract.PREPROCESS_MODEL, variant)
    assert list(tensors(pre.input)) == [contract.IMAGE_INPUT]
    assert list(tensors(pre.output)) == list(contract.PREPROCESS_OUTPUTS)
    post = config(contract.POSTPROCESS_MODEL, variant)
    assert list(tensors(post.input)) == list(contract.POSTPROCESS_INPUTS)
    assert list(tensors(post.output)) == list(contract.POSTPROCESS_OUTPUTS)
    for name in ENSEMBLES:
        ens = config(name, variant)
        assert list(tensors(ens.input)) == [contract.IMAGE_INPUT]
        assert list(tensors(ens.output)) == list(contract.ENSEMBLE_OUTPUTS)


@pytest.mark.parametrize("variant", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_faces_contract(variant):
    from common import contract as c

    faces = config(c.FACES_MODEL, variant)
    assert faces.backend == "python" and faces.max_batch_size == 0
    assert tensors(faces.input) == {c.FACES_INPUT: (mc.TYPE_STRING, (1,))}
    out = tensors(faces.output)
    assert list(out) == list(c.FACES_OUTPUTS)
    assert out[c.FACES_BOX] == (mc.TYPE_FP32, (-1, 4)) and out[c.FACES_ERROR] == (mc.TYPE_STRING, (1,))
    for name in (c.FACES_SCORE, c.FACES_AGE, c.FACES_AGE_LOW, c.FACES_AGE_HIGH, c.FACES_FEMALE):
        assert out[name] == (mc.TYPE_FP32, (-1,))
    assert out[c.FACES_GENDER] == (mc.TYPE_STRING, (-1,)) and out[c.FACES_MORE] == (mc.TYPE_BOOL, (1,))
    # Python backend on CPU even in production (decode, and the BlazeFace detector on LiteRT), like preprocess.
    assert [g.kind for g in faces.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    # All faces of one image go to age and gender as one batch.
    max_faces = int(faces.parameters["max_faces"].string_value)
    from common.contract import MAX_FACES

    assert max_faces == MAX_FACES
    for task in c.TASK_MODELS:
        model = config(task, variant)
        assert max_faces <= model.max_batch_size and model.dynamic_batching.max_queue_delay_microseconds > 0
        side = spec.image_size(task)
        assert tensors(model.input) == {c.CROP_INPUT: (mc.TYPE_UINT8, (side, side, 3))}
        # The faces model asks each CNN for these (BLS); a name the config lacks fails every request.
        assert set(c.TASK_MODEL_OUTPUTS[task]) <= set(tensors(model.output))
    pre = config(contract.PREPROCESS_MODEL, variant)
    for key in ("max_bytes", "max_pixels"):
        assert faces.parameters[key].string_value == pre.parameters[key].string_value


@pytest.mark.parametrize("variant", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_decode_limits_in_the_configs_are_the_codes(variant):
    # The web page refuses files by common.upload's limits before sending them, the server by these parameters:
    # the two must refuse the same files (and DecodeLimits falls back to the same values without them).
    from common import upload
    from serving.pipeline import decode

    expected = {
        "max_bytes": upload.MAX_BYTES,
        "max_pixels": upload.MAX_PIXELS,
        "max_decoded_bytes": upload.MAX_DECODED_BYTES,
        "draft_side": upload.DRAFT_SIDE,
        "request_max_pixels": decode.REQUEST_MAX_PIXELS,
    }
    for model in (contract.PREPROCESS_MODEL, contract.PREPROCESS_CROP_MODEL, contract.FACES_MODEL):
        params = {k: int(v.string_value) for k, v in config(model, variant).parameters.items() if k in expected}
        assert {"max_bytes", "max_pixels"} <= set(params), model
        assert params == {k: expected[k] for k in params}, model
