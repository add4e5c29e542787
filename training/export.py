"""Exports trained Keras models as TensorFlow SavedModels into the Triton repository.

    python -m training.export [--runs runs] [--repo model_repository] [--tasks age,gender]
    python -m training.export --from-repo --tasks age,gender --no-tta --data ../shared/datasets/UTKFace.tar.gz

Each export adds ``<repo>/<task>/<v>/model.savedmodel`` under a new version
number and keeps the earlier ones, with the OpenVINO IR made from it beside it (``model.openvino/``, keyed to
the SavedModel: serving/pipeline/backends/openvino_savedmodel/ir.py). The signature ``serving_default`` takes
``image`` (uint8, ``[-1, size, size, 3]``, size ``spec.image_size(task)``, RGB 0-255) and returns float32
``[-1, 1]`` tensors:
``age``, ``age_low`` and ``age_high`` (the 10th-90th percentile interval), or ``female_probability``.
Flip test-time augmentation, the temperature fitted after training and any per-band interval
correction (``training.calibrate``) are folded in
(:func:`training.heads.served_outputs`), so the server needs to know nothing about either.

``--from-repo`` makes a deployment's variant of what is served from the repository alone, without the training
runs (which are not committed): the newest version of each task, its weights read back from the SavedModel
(:func:`load_version`), exported again with flip TTA on or off. An age version whose interval was calibrated per
band (``training.calibrate``) was calibrated for its own views, so its variant is calibrated again on the validation
split (``--data``) and the calibrated one becomes the newest.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import spec  # noqa: E402
from serving.pipeline.backends.openvino_savedmodel import ir as openvino_ir  # noqa: E402
from training import cli, heads  # noqa: E402
from training import data as utk  # noqa: E402
from training.model import TASKS  # noqa: E402

#: The SavedModel's folder in a version folder, as the serving backend reads it (one definition, in ir.py).
SAVEDMODEL = openvino_ir.SAVEDMODEL
#: What a version folder holds beside it: the training record, the epoch history (a run folder's too), how it was
#: exported. (serving/ops/publish.py leaves the first two out of a release: Triton never reads them.)
RECORD, HISTORY, EXPORT_RECORD = utk.TRAINING_RECORD, "history.csv", "export.json"


def versions(model_dir: Path) -> list[int]:
    """Version numbers present under a Triton model folder, ascending (ASCII digits: ``str.isdigit`` takes "²")."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and re.fullmatch(r"[0-9]+", p.name))


#: The lock file in a model folder that exports hold while they number and rename a version (dot-named: Triton,
#: serving/ops/publish.py and :func:`versions` skip it).
LOCK = ".export.lock"


@contextlib.contextmanager
def version_lock(model_dir: Path):
    """Holds ``<model_dir>/.export.lock`` (an exclusive ``flock``): two exports of one task at once, by any
    scripts of this project, never take the same version number."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def latest(repo: Path, task: str) -> Path:
    """The newest version folder of ``<repo>/<task>``: the one Triton's default version policy serves."""
    found = versions(Path(repo) / task)
    if not found:
        raise FileNotFoundError(f"no exported {task} model under {Path(repo) / task}; run python -m training.export")
    return Path(repo) / task / str(found[-1])


def signature_side(fn) -> int:
    """The input side a SavedModel signature takes, which Triton's configs must declare (the served truth)."""
    return int(fn.structured_input_signature[1][spec.INPUT_NAME].shape[1])


def load_version(version_dir: Path, config: dict | None = None) -> tuple[keras.Model, dict]:
    """The Keras model of an exported version and its training record (``config``, when the caller has read it
    already), the weights read from its SavedModel by variable path.

    Only the SavedModel is committed; the architecture is ``training.model.build`` with the widths recorded in
    ``training_config.json``, or, for an average of networks, ``training.ensemble.architecture`` with its members'.
    """
    from training import ensemble  # here: only a version that averages networks needs it
    from training import model as models

    if config is None:
        config = json.loads((version_dir / RECORD).read_text())
    task = config.get("task") or version_dir.parent.name
    size = config.get("image_size") or spec.image_size(task)
    if "ensemble" in config:
        model = ensemble.architecture(task, [m["config"] for m in config["ensemble"]], size)
    else:
        model = models.build(task, widths=models.parse_widths(config.get("widths")), size=size)
    loaded = tf.saved_model.load(str(version_dir / SAVEDMODEL))
    source = {v.name.split(":")[0]: v.numpy() for v in loaded.variables}
    for w in model.weights:
        w.assign(source[w.path])
    return model, config


def export_model(
    model: keras.Model,
    task: str,
    repo: Path,
    *,
    tta: bool = True,
    temperature: float = 1.0,
    interval: dict | None = None,
    estimate: str = heads.AGE_ESTIMATE,
    size: int | None = None,
    extra_files: dict[str, Path] | None = None,
    records: dict[str, dict] | None = None,
    meta: dict | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Writes ``model`` as the next version of ``<repo>/<task>``.

    Args:
        model: A Keras model taking uint8 images of its task's size.
        task: ``"age"`` or ``"gender"``; decides the output tensors.
        repo: The Triton model repository.
        tta: Fold flip test-time augmentation into the graph (twice the compute per face).
        temperature: Fitted after training (``config.json``); 1 leaves the network's outputs as they are.
        interval: Per-band correction of the age interval (``training.calibrate``); None for none.
        estimate: How the served age is read from the age distribution (``heads.AGE_ESTIMATES``).
        size: Input side; default the task's served size (``spec.image_size``), which the configs declare.
        extra_files: Files copied beside the SavedModel, by target name (config, history).
        records: JSON files written beside the SavedModel, by name (the training record).
        meta: The export record (``export.json``); its ``version`` is added once the number is taken.
        check: Called with the finished folder before it becomes a version; what it raises refuses the export.

    The version is written whole in a temporary folder of this process (records, IR and checks included) and
    renamed into place last, under :func:`version_lock`: Triton's poller never sees a half-made version, nothing
    is written into or removed from a version after it appears, and an existing version is never replaced.

    Returns:
        The new version folder.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    size = size or spec.image_size(task)
    model_dir = Path(repo) / task
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda image: heads.served_outputs(
            model, task, image, tta=tta, temperature=temperature, interval=interval, estimate=estimate
        ),
        input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name=spec.INPUT_NAME)],
    )
    # This process's own folder (pid and a random part): exports side by side never share one.
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        archive.write_out(str(tmp / SAVEDMODEL), verbose=False)
        for name, src in (extra_files or {}).items():
            if Path(src).exists():
                shutil.copy(src, tmp / name)
        for name, record in (records or {}).items():
            (tmp / name).write_text(json.dumps(record, indent=2))
        # The OpenVINO IR the CPU backend reads instead of converting at every cold start, keyed to this SavedModel.
        # Without OpenVINO (a train-only install) the backend converts at load, as it does for any stale IR.
        if importlib.util.find_spec("openvino") is not None:
            openvino_ir.build(tmp)
        if check is not None:
            check(tmp)
        with version_lock(model_dir):
            version_dir = model_dir / str((versions(model_dir) or [0])[-1] + 1)
            if version_dir.exists():  # a folder that is no version (e.g. "007"): never written into
                raise FileExistsError(f"{version_dir} exists; not replacing it")
            if meta is not None:
                (tmp / EXPORT_RECORD).write_text(json.dumps({**meta, "version": int(version_dir.name)}, indent=2))
            # Rename last so Triton's model poller never sees a half-written version.
            tmp.rename(version_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return version_dir


def export_recorded(
    model, task: str, repo: Path, tta: bool, config: dict, record: dict, history: Path, meta: dict
) -> Path:
    """:func:`export_model` with what a training record says the version serves (its temperature, age estimate
    and input size), the record itself and the training history beside it."""
    return export_model(
        model,
        task,
        repo,
        tta=tta,
        temperature=config.get("temperature", 1.0),
        estimate=heads.recorded_estimate(config),
        size=config.get("image_size") or spec.image_size(task),
        extra_files={HISTORY: history},
        records={RECORD: record},
        meta=meta,
    )


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=Path, default=Path("runs"), help="training runs, one folder per task")
    cli.add_repo(p)
    p.add_argument("--tasks", type=cli.tasks, default=",".join(TASKS))
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fold flip test-time augmentation in or leave it out (twice or once the CNN work per face); "
        "default: as the run was trained (docs/performance.md compares the two)",
    )
    p.add_argument(
        "--from-repo",
        action="store_true",
        help="export from the newest version of each task in --repo instead of --runs: a deployment's variant "
        "of what is served (needs --tta or --no-tta)",
    )
    p.add_argument(
        "--data",
        type=cli.data_source,
        help="UTKFace archive: calibrates a calibrated age version's variant again",
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="decode cache for --data ($AGEGENDER_CACHE)")
    args = p.parse_args(argv)
    if args.from_repo:
        return from_repo(args.repo, args.tasks, args.tta, args.data, args.cache_dir, argv)
    # Every run is checked before anything is written: an export of one task of two is half a release.
    runs = {task: finished_run(args.runs / task) for task in args.tasks}
    written = []
    for task, (run, config) in runs.items():
        model = keras.models.load_model(run / "model.keras")
        tta = config.get("tta", False) if args.tta is None else args.tta
        record = config
        if tta != config.get("tta", False):
            # The version's record says what it serves (training.calibrate reads it), and that this was a choice.
            record = {**config, "tta": tta, "tta_trained": config.get("tta", False)}
        meta = {"task": task, "source": str(run / "model.keras")}
        version = export_recorded(model, task, args.repo, tta, config, record, run / HISTORY, meta)
        print(f"exported {task} -> {version}")
        written.append(version)
    return written


def finished_run(run: Path) -> tuple[Path, dict]:
    """A run folder whose training finished (``config.json`` with the served record, written last by
    ``training.train``, ``training.ensemble`` and ``training.swa``) and its record; one line if not."""
    if not (run / "model.keras").is_file() or not (run / "config.json").is_file():
        raise SystemExit(f"error: no trained run in {run} (model.keras and config.json); train it, or give --tasks")
    try:
        config = json.loads((run / "config.json").read_text())
    except ValueError as err:
        raise SystemExit(f"error: {run / 'config.json'} is not JSON ({err})") from None
    if "val_served" not in config:
        raise SystemExit(
            f"error: the run in {run} has not finished (no served record in config.json): let it finish, or "
            f"python -m training.train --resume --out {run} ..."
        )
    return run, config


def from_repo(
    repo: Path,
    tasks: list[str],
    tta: bool | None,
    data: Path | None,
    cache_dir: Path | None = None,
    argv: list[str] | None = None,
) -> list[Path]:
    """Exports the newest version of each task again with flip TTA set to ``tta``; see the module's docstring."""
    from training import calibrate  # here: it imports this module

    sources = {task: cli.version_folder(repo, task, None) for task in tasks}
    missing = [str(src / RECORD) for src in sources.values() if not (src / RECORD).is_file()]
    if missing:
        raise SystemExit(f"error: no training record at {', '.join(missing)}: cannot rebuild the network")
    records = {task: json.loads((src / RECORD).read_text()) for task, src in sources.items()}
    # Everything is checked before anything is written: a half-made variant is worse than none.
    for task, record in records.items():
        if tta is None or tta == record.get("tta", False):
            raise SystemExit(
                f"{sources[task]} already serves with tta={record.get('tta', False)}: --from-repo makes a variant, "
                "give --tta or --no-tta to change it"
            )
        if "interval_calibration" in record and data is None:
            raise SystemExit(
                f"{sources[task]}'s interval was calibrated per band for its own views: give --data (the UTKFace "
                "archive) to calibrate the variant's again on the validation split"
            )
    # The validation faces of a variant to calibrate are read (and counted) before anything is written too.
    cache_dir = utk.default_cache_dir() if cache_dir is None else cache_dir
    val = {
        task: calibrate.validation_faces(data, record, cache_dir)
        for task, record in records.items()
        if "interval_calibration" in record
    }
    # Then each variant is made in memory, its calibration fitted, and only then written: the version that appears
    # is the finished variant, calibrated where its source was, never an uncalibrated step on the way.
    todo = []
    for task, source in sources.items():
        model, config = load_version(source, records[task])
        record = {k: v for k, v in config.items() if k != "interval_calibration"}
        record.update(tta=tta, tta_source=config.get("tta", False), source_version=int(source.name))
        # What the variant serves on validation: the source's single-view score is exactly that without the
        # mirror (same weights and temperature); with it, it was never measured, so none is claimed.
        record.pop("val_served", None)
        if not tta and "val_served_no_tta" in config:
            record["val_served"] = config["val_served_no_tta"]
        fitted = None
        if task in val:
            fitted = calibrate.calibration(
                model,
                record,
                val[task],
                estimate=heads.recorded_estimate(config),
                source_version=int(source.name),
                data=data,
                argv=argv,
            )
        todo.append((task, source, model, config, record, fitted))
    written = []
    for task, source, model, config, record, fitted in todo:
        meta = {"task": task, "source": str(source / SAVEDMODEL), "by": "--from-repo"}
        if fitted is not None:
            version = calibrate.export_calibrated(
                model, record, *fitted, val[task], repo, history=source / HISTORY, meta=meta
            )
        else:
            version = export_recorded(model, task, repo, tta, config, record, source / HISTORY, meta)
        calibrated = ", calibrated again on the validation split" if fitted is not None else ""
        print(f"exported {task} -> {version} (from {source}, tta={tta}{calibrated})")
        written.append(version)
    return written


if __name__ == "__main__":
    main()
