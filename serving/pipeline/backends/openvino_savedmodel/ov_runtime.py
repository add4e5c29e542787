"""OpenVINO as every model inside Triton starts it on CPU: a lean import and a compiled-model cache.

Used by this backend (loaded by path, as a sibling of model.py). The BlazeFace detectors used it too until they
moved to LiteRT (serving/pipeline/detector_runtime.py), which compiles nothing.

``import openvino`` also imports its model converter (``openvino.tools.ovc``, with its telemetry client and
urllib: about a third of the import), which only a SavedModel without a valid IR needs; :func:`import_openvino`
leaves it out and ``ir.convert`` imports it when it is needed.

Compiling is the largest part of a CPU model's start: per start, 0.1-0.2 CPU-s for each CNN (and 0.2-0.45 for each
BlazeFace detector while they ran here), against 0.03-0.08 CPU-s to load the same compiled model from OpenVINO's
cache (measured in-process on the 2-core development machine, docs/performance.md#cold-start). On two cores, with
several such processes starting together, that was most of a second of every cold start.

A cached blob is only valid for one model, OpenVINO version, CPU and set of compile options, so it is not a
release artifact: each machine fills its own cache on its first start, and later starts (a restart, a scale
from zero on the same node) load from it. OpenVINO names each blob by a hash of the model's content and those
settings, so a new model or version compiles anew and never loads an old blob; a blob it cannot read is
compiled again (``tests/test_ov_runtime.py`` checks both).

The folder is ``$AGEGENDER_OV_CACHE``, which the launcher sets (serving/runtime/server.py); unset or empty
means no cache. It is used only if it is ours and no one else can write to it: a blob planted there would be
served as the model.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import sys
import types
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The environment variable naming the cache folder.
ENV = "AGEGENDER_OV_CACHE"


_OVC = "openvino.tools.ovc"
#: OpenVINO's telemetry client. Its converter sends usage events to Google Analytics (a forked process per event,
#: and a client id kept in ~/intel) unless the user opted out, and it falls back to its own no-op stub when this
#: package cannot be imported. A server sends nothing anywhere it was not asked to.
_TELEMETRY = "openvino_telemetry"


def import_openvino() -> types.ModuleType:
    """``openvino``, imported without its model converter unless something loaded the converter already, and with
    the converter's telemetry off for the whole process (unless something imported the telemetry client first)."""
    if _TELEMETRY not in sys.modules:
        sys.modules[_TELEMETRY] = None  # kept: `import openvino_telemetry` now fails, and ovc uses telemetry_stub
    defer = _OVC not in sys.modules
    if defer:
        sys.modules[_OVC] = None  # makes openvino's own `try: from openvino.tools.ovc import ...` skip it
    try:
        import openvino
    finally:
        if defer:
            del sys.modules[_OVC]
    if not hasattr(openvino, "convert_model"):
        # Whatever in this process converts a model later (training.export's IR, research.runtimes) still
        # finds openvino.convert_model: the converter is imported on that first call.
        def convert_model(*args, **kwargs):
            from openvino.tools.ovc import convert_model as real

            openvino.convert_model = real
            return real(*args, **kwargs)

        openvino.convert_model = convert_model
    return openvino


def cache_dir() -> str | None:
    """The cache folder to use, created private if missing; None when caching is off or the folder is unsafe."""
    path = os.environ.get(ENV, "")
    if not path:
        return None
    folder = Path(path)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as err:
        log.warning("OpenVINO cache %s unusable (%s): compiling without it", folder, err)
        return None
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("OpenVINO cache %s is not private to this user: compiling without it", folder)
        return None
    return str(folder)


#: Settings for every model compiled here. OpenVINO pins each compiled model's threads to cores by default on Linux
#: (ENABLE_CPU_PINNING), and every stub pins its own from the first core on: age's two threads, gender's one and the
#: detectors' then fought over the same core while the other idled, and a parallel inference waits for its slowest
#: thread. Unpinned, the kernel spreads the stubs' threads over the cores.
SHARED_CPU = {"ENABLE_CPU_PINNING": False}


def settings(threads: int, precision: str) -> dict[str, Any]:
    """The compile settings of a served CNN (the backend's), for everything that runs one as it is served: the
    benchmarks' in-process reference, ``training.precision``. ``precision``: f32, bf16 or int8
    (:func:`resolve_precision`), always given: left to itself OpenVINO picks bf16 on some CPUs."""
    # An int8 model's float parts (the heads) run in f32.
    hint = "f32" if precision == "int8" else precision
    return {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}


def compile_model(core: Any, model: Any, config: dict[str, Any]) -> Any:
    """``core.compile_model(model, "CPU", config)`` through the cache when there is one.

    ``model`` is an ``ov.Model`` (not a path): OpenVINO then keys the blob by the model's content, so a file
    replaced under the same name can never load the old blob.
    """
    config = {**SHARED_CPU, **config}
    folder = cache_dir()
    return core.compile_model(model, "CPU", {**config, "CACHE_DIR": folder} if folder else config)


#: What a model config may ask for in its ``inference_precision`` parameter. ``auto`` picks, for the CPU the process
#: runs on, a precision that costs much less than f32 there and scores the same:
#:
#: - **bf16** where this process runs it natively (:func:`native_bf16`: AMX, or AVX512_BF16 on a CPU without AMX).
#:   Per image, in-process, one thread, batch 8, age v21 / gender v6 (docs/performance-log.md, twenty-sixth and
#:   twenty-seventh parts): on the Intel VM with AMX 1.6 / 0.8 CPU-ms against f32's 6.5 / 2.7; on an AMD EPYC VM
#:   with AVX512_BF16 and no AMX (Zen 4) 4.9 / 2.2 against 9.4 / 4.0. Where it is not native it is no saving: on
#:   AVX-512 alone OpenVINO emulates it (32.7 / 16.2 against 7.1 / 3.0, the Intel VM with oneDNN capped by
#:   ONEDNN_MAX_CPU_ISA), and the same cap at AVX512_CORE_BF16 on that AMX CPU read bf16 1.7x slower than f32, unlike
#:   the real AVX512_BF16 CPU, so an AMX CPU that cannot use its tiles does not count.
#: - **int8** elsewhere, where the CPU has AVX2 (:func:`native_int8`): the version's ``model.int8`` from
#:   ``training.quantize``, or f32 where the version has no valid one. On the Zen 4 VM with oneDNN held to the
#:   instruction sets of CPUs without native bf16 (twenty-eighth part), age 3.0 / gender 1.5 CPU-ms with VNNI
#:   (Cascade Lake, Ice Lake) and 5.1 / 2.4 with AVX2 alone (Zen 2 and 3, Haswell to Skylake) against f32's 9.3-9.5
#:   / 4.0-4.3; served, 1.3-2x f32's requests. Its answers move more than bf16's (each age 0.10 years from f32's
#:   on average against 0.02; 2.9 at most against 0.7) but score the same: test-split age MAE 4.808 against 4.803,
#:   gender accuracy 0.932 against 0.933 (validation MAE 4.425 against 4.421, where that was judged).
#: - **f32** on anything older, the exported model's own arithmetic.
#:
#: bf16 comes first where both are native: it moves answers a quarter as far as int8 and needs no second artifact.
#: What each precision does to the answers is measured on the test split by ``training.precision``
#: (reports/precision.md).
PRECISIONS = ("f32", "bf16", "int8", "auto")
#: The oneDNN ISA cap (an environment variable) that the CPU plugin obeys; a cap below AMX means no AMX.
ISA_CAP = "ONEDNN_MAX_CPU_ISA"
#: Caps that still allow AVX512_BF16's dot products (oneDNN's names, older and newer: AVX512_CORE_FP16 became
#: AVX10_1_512), and every cap naming AMX.
_BF16_CAPS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512", "AVX10_2_512")
#: Caps below AVX2, under which oneDNN's int8 kernels are SSE4.1's.
_BELOW_AVX2 = ("SSE41", "AVX")
#: Caps at or above AVX2 that leave out every VNNI instruction.
_NO_VNNI_CAPS = ("AVX2", "AVX512_CORE")
#: ``parameters { key: "inference_precision" value { string_value: "..." } }`` in a pbtxt.
_PRECISION_PARAM = re.compile(r'key\s*:\s*"inference_precision"\s*value\s*:?\s*\{\s*string_value\s*:\s*"([^"]*)"')
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_flags(cpuinfo: str | None) -> list[str]:
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    return next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])


def _cap() -> str:
    cap = os.environ.get(ISA_CAP, "").strip().upper()
    return "" if cap == "ALL" else cap


def amx_usable(cpuinfo: str | None = None) -> bool:
    """Whether oneDNN can run AMX tiles in this process: the CPU lists ``amx_bf16``, no ``ONEDNN_MAX_CPU_ISA``
    below AMX is set, and Linux grants the process the tile state (what oneDNN itself asks for before it uses AMX;
    a kernel or sandbox that refuses leaves oneDNN on slower bf16 kernels)."""
    cap = _cap()
    if cap and "AMX" not in cap:
        return False
    if "amx_bf16" not in _cpu_flags(cpuinfo):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


def native_bf16(cpuinfo: str | None = None) -> str:
    """How this process runs bf16 natively: ``"amx"`` (:func:`amx_usable`), ``"avx512_bf16"`` (a CPU with AVX512_BF16
    and without AMX, oneDNN not capped below it), or ``""`` (no native bf16: ``auto`` looks at int8). An AMX CPU that
    cannot use its tiles gives ``""``: held to AVX512_BF16 there, bf16 measured slower than f32 (above)."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo  # read once, for the flags here and amx_usable's
    flags = _cpu_flags(cpuinfo)
    if "amx_bf16" in flags:
        return "amx" if amx_usable(cpuinfo) else ""
    cap = _cap()
    if "avx512_bf16" in flags and (not cap or "AMX" in cap or cap in _BF16_CAPS):
        return "avx512_bf16"
    return ""


def native_int8(cpuinfo: str | None = None) -> str:
    """The int8 dot products oneDNN runs in this process: ``"vnni"`` (AVX512_VNNI or AVX-VNNI, oneDNN not capped
    below them), ``"avx2"`` (AVX2's multiply-adds) or ``""`` (no AVX2, or capped below it: ``auto`` serves f32)."""
    flags, cap = _cpu_flags(cpuinfo), _cap()
    if "avx2" not in flags or cap in _BELOW_AVX2:
        return ""
    if cap in _NO_VNNI_CAPS:
        return "avx2"
    avx512_vnni = "avx512_vnni" in flags and not cap.startswith("AVX2_")  # AVX2_VNNI caps: only VEX-coded VNNI
    return "vnni" if avx512_vnni or "avx_vnni" in flags else "avx2"


def native(cpuinfo: str | None = None) -> dict[str, str]:
    """:func:`native_bf16` and :func:`native_int8`, from one read of /proc/cpuinfo."""
    cpuinfo = _cpuinfo() if cpuinfo is None else cpuinfo
    return {"bf16": native_bf16(cpuinfo), "int8": native_int8(cpuinfo)}


def configured_precision(config_text: str) -> str:
    """The ``inference_precision`` a model config (pbtxt text) asks for, lower-case; "" where it asks for none.
    Read without protobuf, so the publisher (which must know whether a model may serve its int8 files) and the
    benchmarks read it the same way; the backend gets the same value from Triton's parsed config."""
    found = _PRECISION_PARAM.search(re.sub(r"#[^\n]*", "", config_text))
    return found.group(1).strip().lower() if found else ""


def may_serve_int8(choice: str) -> bool:
    """Whether a config's ``inference_precision`` can serve the version's ``model.int8/`` on some CPU."""
    return (choice or "").strip().lower() in ("int8", "auto")


def resolve_precision(choice: str, bf16: bool | None = None, int8: bool | None = None) -> str:
    """The ``INFERENCE_PRECISION_HINT`` for a config's ``inference_precision`` (empty: f32, the exported model's
    own arithmetic). ``bf16`` / ``int8``: whether this process runs them natively (default: :func:`native_bf16`,
    :func:`native_int8`), which is all ``auto`` goes by (see :data:`PRECISIONS`)."""
    choice = (choice or "f32").strip().lower()
    if choice not in PRECISIONS:
        raise ValueError(f"inference_precision {choice!r}: expected one of {', '.join(PRECISIONS)}")
    if choice != "auto":
        return choice
    if bf16 is None or int8 is None:
        found = native()  # one read of the CPU's flags for both
        bf16 = bool(found["bf16"]) if bf16 is None else bf16
        int8 = bool(found["int8"]) if int8 is None else int8
    return "bf16" if bf16 else "int8" if int8 else "f32"
