"""OpenVINO's compiled-model cache (serving/pipeline/backends/openvino_savedmodel/ov_runtime.py), in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.pipeline.backends.openvino_savedmodel import ov_runtime

ROOT = Path(__file__).resolve().parents[1]

ov = ov_runtime.import_openvino()
CONFIG = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def save(path, factor: float) -> None:
    """A small model computing ``relu(x * factor)``, written as an IR at ``path``."""
    from openvino import opset13 as ops

    x = ops.parameter([2, 4], np.float32, name="x")
    y = ops.relu(ops.multiply(x, ops.constant(np.full((1, 4), factor, np.float32))))
    ov.save_model(ov.Model([y], [x], "scale"), str(path))


def run(path) -> np.ndarray:
    """Reads the IR and compiles it the way the backend does, through the cache; returns its output on X."""
    core = ov.Core()
    compiled = ov_runtime.compile_model(core, core.read_model(str(path)), CONFIG)
    return compiled(X)[compiled.outputs[0]]


def test_cache_is_private_and_optional(tmp_path, monkeypatch):
    monkeypatch.delenv(ov_runtime.ENV, raising=False)
    assert ov_runtime.cache_dir() is None
    monkeypatch.setenv(ov_runtime.ENV, "")
    assert ov_runtime.cache_dir() is None
    folder = tmp_path / "a" / "cache"
    monkeypatch.setenv(ov_runtime.ENV, str(folder))
    assert ov_runtime.cache_dir() == str(folder) and folder.stat().st_mode & 0o777 == 0o700
    # Others could plant a blob there, which would be served as the model: not used.
    folder.chmod(0o777)
    assert ov_runtime.cache_dir() is None
    folder.chmod(0o700)
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(ov_runtime.ENV, str(tmp_path / "file"))
    assert ov_runtime.cache_dir() is None  # not a folder: compile without a cache rather than fail


def test_a_changed_model_never_loads_the_old_blob(tmp_path, monkeypatch):
    monkeypatch.setenv(ov_runtime.ENV, str(tmp_path / "cache"))
    model = tmp_path / "model.xml"
    save(model, 2.0)
    np.testing.assert_array_equal(run(model), X * 2)
    blobs = set((tmp_path / "cache").glob("*.blob"))
    assert len(blobs) == 1
    np.testing.assert_array_equal(run(model), X * 2)  # loaded from the cache: no new blob
    assert set((tmp_path / "cache").glob("*.blob")) == blobs
    # The same file name with other weights: compiled anew, never the old blob.
    save(model, 3.0)
    np.testing.assert_array_equal(run(model), X * 3)
    assert len(set((tmp_path / "cache").glob("*.blob"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_blob_is_compiled_again(tmp_path, monkeypatch, damage):
    monkeypatch.setenv(ov_runtime.ENV, str(tmp_path / "cache"))
    model = tmp_path / "model.xml"
    save(model, 2.0)
    run(model)
    (blob,) = (tmp_path / "cache").glob("*.blob")
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"garbage" * 10)
    np.testing.assert_array_equal(run(model), X * 2)


def test_import_leaves_the_converter_out():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        from serving.pipeline.backends.openvino_savedmodel import ov_runtime
        ov = ov_runtime.import_openvino()
        print("openvino.tools.ovc" in sys.modules, "openvino" in sys.modules)
        try:
            ov.convert_model(12345)  # not a model: the converter itself says so
        except Exception as err:
            print(type(err).__module__.startswith("openvino.tools.ovc"))
        print("openvino.tools.ovc" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Left out at import; still there for a later conversion in the same process.
    assert out.stdout.split() == ["False", "True", "True", "True"]


@pytest.mark.parametrize("lean", [True, False], ids=["import_openvino", "plain_import"])
def test_converting_sends_no_telemetry(tmp_path, lean):
    import os
    import subprocess
    import sys
    import textwrap

    # A fresh process with a home of its own, as a server's first start has: no opt-out file there, so OpenVINO's
    # telemetry client, when it runs, consents by itself and writes its client id under ~/intel before sending.
    # CI=true also turns it off, so the variables it reads for that are removed.
    savedmodel = Path(__file__).resolve().parents[1] / "model_repository" / "gender" / "4"
    code = textwrap.dedent(
        f"""
        from serving.pipeline.backends.openvino_savedmodel import ir, ov_runtime
        if {lean}:
            ov_runtime.import_openvino()
            ir.convert({str(savedmodel)!r})
        else:
            import openvino  # what the guard is for: the real client is loaded (not run: it would send)
        from openvino.tools.ovc import telemetry_utils
        print(telemetry_utils.tm.__name__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    if lean:
        assert out.stdout.split()[-1] == "openvino.tools.ovc.telemetry_stub"
        assert not (tmp_path / "intel").exists(), sorted(tmp_path.rglob("*"))
    else:  # the control: without the guard the converter holds the real client, so the check above can fail
        assert out.stdout.split()[-1] == "openvino_telemetry"


@pytest.mark.parametrize("cached", [True, False])
def test_threads_are_never_pinned_to_cores(tmp_path, monkeypatch, cached):
    """Every stub compiles through compile_model; OpenVINO's default pins each model's threads from the first core
    on, so the stubs' threads piled onto one core (crop path at c=16: 113 -> 137 req/s unpinned)."""
    monkeypatch.setenv(ov_runtime.ENV, str(tmp_path / "cache") if cached else "")
    save(tmp_path / "m.xml", 2.0)
    core = ov.Core()
    assert core.get_property("CPU", "ENABLE_CPU_PINNING") is True  # the default this guards against, on Linux
    for _ in range(2):  # the second compile loads the cached blob, when there is a cache
        compiled = ov_runtime.compile_model(core, core.read_model(str(tmp_path / "m.xml")), CONFIG)
        assert compiled.get_property("ENABLE_CPU_PINNING") is False
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
BF16_CPU = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n"
AVX512_CPU = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


def test_precision_is_the_configs_choice_and_auto_means_native_bf16_else_int8(monkeypatch):
    monkeypatch.delenv(ov_runtime.ISA_CAP, raising=False)
    assert ov_runtime.resolve_precision("") == ov_runtime.resolve_precision("f32") == "f32"
    assert ov_runtime.resolve_precision(" BF16 ") == "bf16"
    assert ov_runtime.resolve_precision("int8", bf16=True, int8=False) == "int8"  # a config's explicit choice
    # auto: bf16 where it is native (it moves answers a quarter as far as int8), else int8 where AVX2 runs it.
    assert ov_runtime.resolve_precision("auto", bf16=True, int8=True) == "bf16"
    assert ov_runtime.resolve_precision("auto", bf16=True, int8=False) == "bf16"
    assert ov_runtime.resolve_precision("auto", bf16=False, int8=True) == "int8"
    assert ov_runtime.resolve_precision("auto", bf16=False, int8=False) == "f32"
    with pytest.raises(ValueError, match="inference_precision 'fp16'"):
        ov_runtime.resolve_precision("fp16")
    # AVX512_BF16 without AMX (AMD Zen 4, measured: bf16 half f32's cost) is native bf16, but not AMX.
    assert not ov_runtime.amx_usable(BF16_CPU)
    assert ov_runtime.native_bf16(BF16_CPU) == "avx512_bf16"
    # AVX-512 alone: OpenVINO would emulate bf16 (4.6-5x f32's cost).
    assert ov_runtime.native_bf16(AVX512_CPU) == ov_runtime.native_bf16("") == ""
    assert not ov_runtime.amx_usable("")
    # A CPU with AMX still needs Linux to grant the tile state; here the answer is whatever this kernel says. Without
    # it the CPU runs no native bf16 as far as auto is concerned: held to its AVX512_BF16 kernels, bf16 was slower.
    granted = ov_runtime.amx_usable(AMX_CPU)
    assert granted in (True, False)
    assert ov_runtime.native_bf16(AMX_CPU) == ("amx" if granted else "")
    # oneDNN capped (how the benchmarks stand in for other CPUs): below AMX is no AMX, whatever the CPU has; below
    # AVX512_CORE_BF16 no native bf16 at all.
    for cap in ("AVX512_CORE_BF16", "avx2"):
        monkeypatch.setenv(ov_runtime.ISA_CAP, cap)
        assert not ov_runtime.amx_usable(AMX_CPU)
        assert ov_runtime.native_bf16(AMX_CPU) == ""
    for cap in ("ALL", "AVX512_CORE_AMX"):
        monkeypatch.setenv(ov_runtime.ISA_CAP, cap)
        assert ov_runtime.amx_usable(AMX_CPU) == granted
        assert ov_runtime.native_bf16(BF16_CPU) == "avx512_bf16"
    for cap, native in (("AVX512_CORE_BF16", "avx512_bf16"), ("avx10_1_512", "avx512_bf16"), ("AVX512_CORE_VNNI", "")):
        monkeypatch.setenv(ov_runtime.ISA_CAP, cap)
        assert ov_runtime.native_bf16(BF16_CPU) == native, cap


def test_native_int8_follows_the_cpus_flags_and_the_cap(monkeypatch):
    monkeypatch.delenv(ov_runtime.ISA_CAP, raising=False)
    avx2 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
    avx_vnni = avx2.replace("fma", "fma avx_vnni")
    assert ov_runtime.native_int8(avx2) == "avx2"  # Zen 2 and 3, Haswell to Skylake
    assert ov_runtime.native_int8(AVX512_CPU) == ov_runtime.native_int8(avx_vnni) == "vnni"
    assert ov_runtime.native_int8(BF16_CPU) == ""  # no AVX2 listed: nothing measured, f32
    assert ov_runtime.native_int8("") == ""
    assert ov_runtime.native(AVX512_CPU) == {"bf16": "", "int8": "vnni"}
    for cap, native in (
        ("AVX512_CORE_VNNI", "vnni"),
        ("avx512_core_bf16", "vnni"),
        ("AVX512_CORE_AMX", "vnni"),
        ("AVX512_CORE", "avx2"),
        ("AVX2", "avx2"),
        ("AVX2_VNNI", "avx2"),  # only the VEX-coded VNNI, which this CPU lacks
        ("AVX", ""),
        ("SSE41", ""),
    ):
        monkeypatch.setenv(ov_runtime.ISA_CAP, cap)
        assert ov_runtime.native_int8(AVX512_CPU) == native, cap
    monkeypatch.setenv(ov_runtime.ISA_CAP, "AVX2_VNNI")
    assert ov_runtime.native_int8(avx_vnni) == "vnni"


def test_configs_precision_is_read_one_way(tmp_path):
    """The publisher and the benchmarks read a config's inference_precision with one reader; the committed CPU
    configs say auto, so both may serve their int8 files."""
    for task in ("age", "gender"):
        text = (ROOT / "model_repository" / task / "configs" / "cpu.pbtxt").read_text()
        assert ov_runtime.configured_precision(text) == "auto" and ov_runtime.may_serve_int8("auto")
    assert (
        ov_runtime.configured_precision('parameters {\n key:"inference_precision"\n value:{string_value:"INT8"}}')
        == "int8"
    )
    assert ov_runtime.configured_precision('# key: "inference_precision" value { string_value: "int8" }\n') == ""
    assert ov_runtime.configured_precision('parameters { key: "inference_threads" value { string_value: "2" } }') == ""
    assert (
        not ov_runtime.may_serve_int8("")
        and not ov_runtime.may_serve_int8("bf16")
        and ov_runtime.may_serve_int8("int8")
    )


def test_auto_compiles_what_it_resolves_to(tmp_path, monkeypatch):
    """OpenVINO compiles the resolved precision: bf16 where this CPU runs it natively; int8 (whose float parts
    compile as f32) without native bf16 on an AVX2 CPU; f32 under a cap below AVX2, whatever the CPU."""
    monkeypatch.delenv(ov_runtime.ENV, raising=False)
    model = tmp_path / "model.xml"
    save(model, 2.0)
    core = ov.Core()
    avx2 = "avx2" in Path("/proc/cpuinfo").read_text()
    for cap, want in ((None, None), ("AVX512_CORE", "int8" if avx2 else "f32"), ("AVX", "f32")):
        if cap:
            monkeypatch.setenv(ov_runtime.ISA_CAP, cap)
        precision = ov_runtime.resolve_precision("auto")
        if cap is None:
            want = "bf16" if ov_runtime.native_bf16() else ("int8" if ov_runtime.native_int8() else "f32")
        assert precision == want, cap
        compiled = ov_runtime.compile_model(core, core.read_model(str(model)), ov_runtime.settings(1, precision))
        assert compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == (
            "f32" if precision == "int8" else precision
        )
