"""Which ``tritonserver`` runs, and the backend folder the pip wheel's binary needs.

Inside the NVIDIA container the ``tritonserver`` on PATH is used with its own backends (TensorFlow included).
Elsewhere the binary shipped in the ``nvidia-pytriton`` wheel runs, which only has the Python backend: a backend
folder with the stub for this interpreter (and this project's Python-based backends) is assembled in the
server's private run folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from serving.runtime.errors import TritonStartError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = ROOT / "model_repository"
#: Python-based Triton backends of this project, one folder each; copied next to the pip binary's `python` backend.
PYTHON_BACKENDS = ROOT / "serving" / "pipeline" / "backends"


def gpu_visible() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def container_binary() -> str | None:
    """The NVIDIA image's ``tritonserver`` (on PATH), which has every backend; None elsewhere."""
    return shutil.which("tritonserver")


def pytriton_dir() -> Path | None:
    # find_spec locates the wheel without importing pytriton (and its heavy dependencies).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return path if (path / "bin" / "tritonserver").exists() else None


def pip_triton(run_dir: Path, env: dict[str, str]) -> tuple[str, Path]:
    """The wheel's binary and a backend directory assembled under ``run_dir``; ``env`` gets the library and
    interpreter paths the binary and its stub need."""
    pkg = pytriton_dir()
    if pkg is None:
        raise TritonStartError(
            "No `tritonserver` on PATH and no nvidia-pytriton wheel; run `make setup` "
            "or use the nvcr.io/nvidia/tritonserver image."
        )
    stub = pkg / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    if not stub.is_dir():
        raise TritonStartError(f"nvidia-pytriton has no Python backend stub for Python {sys.version.split()[0]}.")
    # The backend expects its stub next to libtriton_python.so, and the wheel keeps one stub per Python version.
    backends = Path(run_dir) / "backends"
    backend = backends / "python"
    if not backend.is_dir():
        shutil.copytree(pkg / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
        # A link, not a copy: exec of a file that any process still holds open for writing fails with ETXTBSY,
        # and a child forked (by another thread) while the copy was being written kept that descriptor: Triton
        # then never started its stubs ("Text file busy", seen with two pytest workers). A link is never written.
        (backend / "triton_python_backend_stub").symlink_to(stub / "triton_python_backend_stub")
        # Our Python-based backends (serving/pipeline/backends/<name>/model.py, `backend: "<name>"`) must
        # sit next to the `python` backend, whose libtriton_python.so runs them.
        for own in PYTHON_BACKENDS.iterdir():
            if (own / "model.py").is_file():
                shutil.copytree(own, backends / own.name, ignore=shutil.ignore_patterns("__pycache__"))
    libs = [
        str(pkg.parent.parent / "nvidia_pytriton.libs"),
        sysconfig.get_config_var("LIBDIR"),
        env.get("LD_LIBRARY_PATH"),
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, libs))
    # The stub embeds Python and finds its prefix (the venv, with numpy and OpenVINO) from the first python on PATH.
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return str(pkg / "bin" / "tritonserver"), backends
