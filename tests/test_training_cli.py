"""The training scripts' command lines: mistakes end in one line before anything is written, versions appear whole
and never change, the decode cache follows its source and keeps the faces private, reports are replaced whole."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common import spec
from tests import utk_fixture
from training import calibrate, evaluate, export, heads, quantize, train
from training import data as utk
from training import model as models
from training.callbacks import BudgetAndCosine, ResumeState

ROOT = Path(__file__).resolve().parents[1]
RECORD = export.RECORD


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory) -> dict[str, Path]:
    """A tiny untrained network of each task exported once (seconds of CPU each), for :func:`tiny_version` to copy."""
    repo = tmp_path_factory.mktemp("tiny") / "repo"
    return {task: export.export_model(models.build(task, widths=(4, 8)), task, repo) for task in models.TASKS}


def tiny_version(exports: dict[str, Path], repo: Path, task: str, **record) -> Path:
    """A tiny untrained network as the next version of ``task`` (a copy of its export in ``exports``: SavedModel and
    the IR keyed to it), with a training record."""
    config = {"task": task, "widths": "4,8", "seed": utk.SPLIT_SEED, "tta": True, "temperature": 1.0, **record}
    version = Path(repo) / task / str((export.versions(Path(repo) / task) or [0])[-1] + 1)
    shutil.copytree(exports[task], version)
    (version / RECORD).write_text(json.dumps(config))
    return version


@pytest.fixture(scope="module")
def scored_repo(tiny_exports, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """A repository of tiny versions, age 1 and 2 and gender 1, made once for the evaluate tests, which only
    read it: the repository and the three version folders."""
    repo = tmp_path_factory.mktemp("scored") / "repo"
    versions = [tiny_version(tiny_exports, repo, task) for task in ("age", "age", "gender")]
    return repo, *versions


def fake_run(runs: Path, task: str) -> Path:
    """A finished run folder (what training.train leaves) without training: a tiny network and its record."""
    run = runs / task
    run.mkdir(parents=True)
    models.build(task, widths=(4, 8)).save(run / "model.keras")
    record = {"task": task, "widths": "4,8", "seed": utk.SPLIT_SEED, "tta": True, "temperature": 1.0}
    (run / "config.json").write_text(json.dumps({**record, "val_served": {}}))
    return run


# --- arguments -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--widths", "abc"],
        ["--widths", "8,0"],
        ["--budget-minutes", "0"],
        ["--budget-minutes", "-5"],
        ["--image-size", "-1"],
    ],
)
def test_train_refuses_nonsense_numbers_when_parsing(archive, option, capsys):
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--task", "age", "--data", str(archive), *option])
    assert exc.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err


def test_a_shared_positive_int_type():
    from training import cli

    assert cli.positive_int("3") == 3
    for bad in ("0", "-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.positive_int(bad)
    assert cli.widths(" 4, 8") == "4,8"


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("missing.tar.gz", None),
        ("notatar.tar.gz", lambda p: p.write_bytes(b"this is not an archive")),
        ("zero.tar.gz", lambda p: p.write_bytes(b"")),
    ],
)
def test_data_that_is_no_archive_is_refused_when_parsing(tmp_path, name, make, capsys):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--task", "age", "--data", str(path)])
    assert exc.value.code == 2 and "argument --data" in capsys.readouterr().err


def test_an_empty_or_truncated_archive_is_one_line_not_a_traceback(archive, tmp_path):
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz"):
        pass
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    for path, words in ((empty, "no usable UTKFace image"), (truncated, "could not be read")):
        with pytest.raises(utk.DataError, match=words):
            utk.load(path, size=32, cache_dir=None)
        with pytest.raises(SystemExit, match=words):
            train.main(["--task", "age", "--data", str(path), "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_too_few_faces_for_a_validation_split_is_refused_before_the_run_folder(tmp_path):
    folder = tmp_path / "five"
    folder.mkdir()
    for i in range(3):
        (folder / f"{20 + i}_0_0_2017011600000000{i}.jpg.chip.jpg").write_bytes(utk_fixture.jpeg(i))
    with pytest.raises(SystemExit, match="validation faces"):
        train.main(
            ["--task", "age", "--data", str(folder), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path)]
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("repo_flag", [False, True])
@pytest.mark.parametrize("script", ["export", "evaluate", "calibrate", "quantize"])
def test_a_repository_url_is_refused_not_written_as_a_folder_named_s3(
    archive, tmp_path, monkeypatch, capsys, script, repo_flag
):
    # make passes MODEL_REPOSITORY (documented for `make serve` as an s3:// URL) to every recipe.
    url = "s3://127.0.0.1:9000/models/r1"
    monkeypatch.chdir(tmp_path)
    argv = {
        "export": ["--runs", str(tmp_path / "runs")],
        "evaluate": ["--data", str(archive)],
        "calibrate": ["--data", str(archive)],
        "quantize": ["--data", str(archive)],
    }[script]
    if repo_flag:
        argv += ["--repo", url]
    else:
        monkeypatch.setenv("MODEL_REPOSITORY", url)
    main = {"export": export.main, "evaluate": evaluate.main, "calibrate": calibrate.main, "quantize": quantize.main}
    with pytest.raises(SystemExit) as exc:
        main[script](argv)
    assert exc.value.code == 2 and "is a URL" in capsys.readouterr().err
    assert not (tmp_path / "s3:").exists()


# --- training runs ---------------------------------------------------------------------------------------------


def test_train_refuses_a_folder_that_holds_a_run_and_resume_needs_one(archive, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "model.keras").write_bytes(b"the finished model of an earlier run")
    common = ["--task", "age", "--data", str(archive), "--epochs", "1", "--widths", "4,8", "--run-eagerly"]
    with pytest.raises(SystemExit, match="already holds a run.*--overwrite"):
        train.main([*common, "--out", str(run)])
    assert (run / "model.keras").read_bytes() == b"the finished model of an earlier run"
    for mode, words in (("--resume", "holds no interrupted run"), ("--finish-only", "holds no trained run")):
        with pytest.raises(SystemExit, match=words):
            train.main([*common, "--out", str(tmp_path / "nothing"), mode])
    with pytest.raises(SystemExit, match="--init-from .*no such file"):
        train.main([*common, "--out", str(tmp_path / "new"), "--init-from", str(tmp_path / "missing.keras")])
    assert not (tmp_path / "nothing").exists() and not (tmp_path / "new").exists()


def test_the_budget_goes_on_after_a_resume(tmp_path):
    # --resume used to restart the wall-clock budget and the time-based cosine schedule from zero.
    budget = BudgetAndCosine(1e-3, 10, 1.0, elapsed=30.0)
    budget.on_train_begin()
    assert 30.0 <= budget.elapsed() < 40.0
    state = tmp_path / "state.json"
    ResumeState(state, elapsed=budget.elapsed).on_epoch_end(0, {"val_loss": 1.0})
    assert 30.0 <= json.loads(state.read_text())["elapsed_seconds"] < 40.0
    with pytest.raises(ValueError, match="positive"):
        BudgetAndCosine(1e-3, 10, 0)


# --- exports ---------------------------------------------------------------------------------------------------


def test_export_checks_every_run_before_writing_any(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "gender")
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit, match="no trained run in .*age"):
        export.main(["--runs", str(runs), "--repo", str(repo), "--tasks", "gender,age"])
    assert export.versions(repo / "gender") == []
    # A run that has not finished (no served record yet) is refused the same way.
    unfinished = fake_run(runs, "age")
    (unfinished / "config.json").write_text(json.dumps({"task": "age"}))
    with pytest.raises(SystemExit, match="has not finished"):
        export.main(["--runs", str(runs), "--repo", str(repo), "--tasks", "gender,age"])
    assert export.versions(repo / "gender") == []
    (version,) = export.main(["--runs", str(runs), "--repo", str(repo), "--tasks", "gender"])
    # The records are written before the version appears (nothing is added to it afterwards).
    assert json.loads((version / export.EXPORT_RECORD).read_text())["version"] == 1
    assert json.loads((version / RECORD).read_text())["task"] == "gender"


def test_an_export_that_finishes_first_takes_the_next_number_and_none_is_overwritten(tmp_path):
    repo = tmp_path / "repo"
    net = models.build("gender", widths=(4, 8))
    stale = repo / "gender" / ".tmp-1"  # what a crashed export of the old naming left
    stale.mkdir(parents=True)
    others = []

    def meanwhile(folder: Path) -> None:
        # Another export runs from start to end while this one is being written.
        assert folder.parent == repo / "gender" and folder.name.startswith(f".tmp-{os.getpid()}-")
        others.append(export.export_model(net, "gender", repo, meta={"by": "the other"}))

    mine = export.export_model(net, "gender", repo, meta={"by": "this one"}, check=meanwhile)
    assert others == [repo / "gender" / "1"] and mine == repo / "gender" / "2"
    for folder, by in ((others[0], "the other"), (mine, "this one")):
        assert json.loads((folder / export.EXPORT_RECORD).read_text()) == {"by": by, "version": int(folder.name)}
    assert (repo / "gender" / export.LOCK).is_file()
    assert sorted(p.name for p in (repo / "gender").iterdir()) == [".export.lock", ".tmp-1", "1", "2"]


def test_a_refused_check_leaves_no_version_and_no_temporary_folder(tiny_exports, tmp_path):
    repo = tmp_path / "repo"
    first = tiny_version(tiny_exports, repo, "age")
    before = sorted(p.name for p in (repo / "age").iterdir())
    assert before == [first.name]

    def refuse(folder: Path) -> None:
        assert (folder / export.SAVEDMODEL).is_dir() and (folder / "notes.json").is_file()
        raise RuntimeError("moves the age estimate")

    with pytest.raises(RuntimeError, match="moves the age estimate"):
        export.export_model(models.build("age", widths=(4, 8)), "age", repo, records={"notes.json": {}}, check=refuse)
    assert sorted(p.name for p in (repo / "age").iterdir()) == before


def test_a_calibrated_variant_appears_once_calibrated_and_never_half_made(archive, tiny_exports, tmp_path, monkeypatch):
    """export --from-repo of a calibrated age version: its data is read before anything is written, and the version
    that appears is the calibrated variant (the uncalibrated step is never a version Triton could serve)."""
    repo = tmp_path / "repo"
    source = tiny_version(
        tiny_exports, repo, "age", interval_calibration={"chosen": "age bands"}, val_served_no_tta={"mae": 9.0}
    )
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "cache"))
    argv = ["--from-repo", "--repo", str(repo), "--tasks", "age", "--no-tta"]

    # Data that is not there: refused before any version is written (it used to crash after writing one).
    with pytest.raises(SystemExit):
        export.main([*argv, "--data", str(tmp_path / "nonexistent.tar.gz")])
    assert export.versions(repo / "age") == [1]
    # Too few validation faces (the fixture's): refused before anything is written too.
    with pytest.raises(SystemExit, match="validation faces"):
        export.main([*argv, "--data", str(archive)])
    assert export.versions(repo / "age") == [1]

    # With enough faces (the bar lowered for the fixture) and a fit that fails: still nothing written.
    monkeypatch.setattr(calibrate, "MIN_VAL", 1)

    def broken(*args, **kwargs):
        raise ValueError("calibration cell holds 3 faces; too few to fit")

    monkeypatch.setattr(calibrate, "calibration", broken)
    with pytest.raises(ValueError, match="too few to fit"):
        export.main([*argv, "--data", str(archive)])
    assert export.versions(repo / "age") == [1]

    def fitted(model, config, val, *, estimate, source_version, data, argv):
        # What calibrate.calibration returns, with fixed multiples (the real fit needs the full UTKFace).
        assert config["tta"] is False and source_version == 1
        interval = {"cells": [{**c, "q_low": 0.5, "q_high": 0.25} for c in calibrate.cells_for()]}
        served = heads.served_outputs(model, "age", tf.constant(val.images), tta=False, estimate=estimate)
        record = {
            "estimate": estimate,
            "source_estimate": estimate,
            "val_mae": 9.0,
            "val_fitted": {"coverage": 0.8, "width": 10.0},
            "interval": interval,
            "source_version": source_version,
        }
        return record, {spec.AGE_OUTPUT: heads.flat(served)[spec.AGE_OUTPUT]}

    monkeypatch.setattr(calibrate, "calibration", fitted)
    (variant,) = export.main([*argv, "--data", str(archive)])
    assert export.versions(repo / "age") == [1, 2] and variant == repo / "age" / "2"
    record = json.loads((variant / RECORD).read_text())
    assert record["tta"] is False and record["source_version"] == 1
    assert record["interval_calibration"]["interval"]["cells"][0]["q_low"] == 0.5
    assert json.loads((variant / export.EXPORT_RECORD).read_text())["version"] == 2
    faces = np.random.default_rng(1).integers(0, 255, (4, spec.image_size("age"), spec.image_size("age"), 3), np.uint8)
    before, after = evaluate.predict(source, faces), evaluate.predict(variant, faces)
    assert not np.allclose(before[spec.AGE_LOW_OUTPUT], after[spec.AGE_LOW_OUTPUT])  # the interval was folded in


# --- quantize, evaluate, crop calibration ------------------------------------------------------------------------


def test_quantize_leaves_a_version_s_int8_model_alone_and_needs_enough_faces(
    archive, tiny_exports, tmp_path, monkeypatch, capsys
):
    repo = tmp_path / "repo"
    tiny_version(tiny_exports, repo, "gender")

    def never(*args, **kwargs):
        raise AssertionError("quantized")

    monkeypatch.setattr(quantize, "quantize", never)
    with pytest.raises(SystemExit) as exc:
        quantize.main(["--data", str(archive), "--repo", str(repo), "--tasks", "gender", "--faces", "4"])
    assert exc.value.code == 2 and "at least 200" in capsys.readouterr().err
    monkeypatch.setattr(quantize.ir, "int8_valid", lambda version: (True, "valid"))
    with pytest.raises(SystemExit, match="valid already.*--force"):
        quantize.main(["--data", str(archive), "--repo", str(repo), "--tasks", "gender"])
    # --force goes on to the faces: the fixture's training split is too small to calibrate on.
    with pytest.raises(SystemExit, match="training faces"):
        quantize.main(["--data", str(archive), "--repo", str(repo), "--tasks", "gender", "--force"])


def test_evaluate_scores_the_test_split_and_replaces_a_report_only_whole(archive, scored_repo, tmp_path, monkeypatch):
    repo = scored_repo[0]
    out = tmp_path / "reports"
    out.mkdir()
    (out / "evaluation.md").write_text("the previous report")
    (out / "age_scatter.png").write_bytes(b"the previous plot")
    base = ["--data", str(archive), "--repo", str(repo), "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    # The default split is test: the fixture's holds a handful of faces, too few for a report.
    with pytest.raises(SystemExit, match="faces in the test split"):
        evaluate.main(base)
    assert evaluate.scoring_parser("", "test").parse_args(["--data", str(archive)]).split == "test"

    def failing_plots(folder, *args):
        (folder / "age_scatter.png").write_bytes(b"a new plot")
        raise IndexError("a plot failed half-way")

    monkeypatch.setattr(evaluate, "plots", failing_plots)
    with pytest.raises(IndexError):
        evaluate.main([*base, "--split", "all"])
    assert (out / "evaluation.md").read_text() == "the previous report"
    assert (out / "age_scatter.png").read_bytes() == b"the previous plot"
    assert sorted(p.name for p in out.iterdir()) == ["age_scatter.png", "evaluation.md"]


def test_evaluate_draws_the_training_curves_of_the_versions_it_scores(archive, scored_repo, tmp_path, monkeypatch):
    repo, chosen, _newer, gender = scored_repo  # age 2 is newer, not evaluated
    drawn = {}

    def recording_plots(folder, data, pred, computed, versions, *args):
        drawn.update(versions)
        return []

    monkeypatch.setattr(evaluate, "plots", recording_plots)
    argv = ["--data", str(archive), "--repo", str(repo), "--out", str(tmp_path / "out"), "--split", "all"]
    evaluate.main([*argv, "--cache-dir", str(tmp_path / "cache"), "--age-version", chosen.name])
    assert drawn == {"age": chosen, "gender": gender}


def test_evaluate_refuses_to_write_predictions_into_the_repository(archive, tmp_path, capsys):
    for inside in (ROOT / "reports" / "predictions.csv", ROOT / "predictions.csv"):
        with pytest.raises(SystemExit) as exc:
            # (--repo and --out elsewhere: whatever happens, nothing is written into this checkout)
            argv = ["--data", str(archive), "--predictions", str(inside), "--repo", str(tmp_path / "none")]
            evaluate.main([*argv, "--out", str(tmp_path / "out")])
        assert exc.value.code == 2 and "in the repository" in capsys.readouterr().err
        assert not inside.exists()
    assert evaluate.predictions_path(str(ROOT / "runs" / "p.csv")) == ROOT / "runs" / "p.csv"


def test_crop_calibration_writes_the_served_file_only_when_asked(tmp_path, monkeypatch, capsys):
    from research import calibrate_crop

    served = tmp_path / "crop_calibration.json"
    served.write_text("the served constants")
    monkeypatch.setattr(calibrate_crop, "CALIBRATION_PATH", served)
    monkeypatch.setattr(calibrate_crop, "sample_images", lambda *a: pytest.fail("sampled images"))
    for argv in (["--n", "5"], ["--n", "5", "--write-served"], ["--out", str(served)]):
        with pytest.raises(SystemExit) as exc:
            calibrate_crop.main(["--data", str(tmp_path), *argv])
        assert exc.value.code == 2
    assert served.read_text() == "the served constants"


# --- data --------------------------------------------------------------------------------------------------------


def test_the_decode_cache_follows_a_folder_keeps_faces_private_and_prunes_itself(tmp_path):
    folder = utk_fixture.write_folder(tmp_path / "src")
    cache = tmp_path / "cache"
    first = utk.load(folder, size=32, cache_dir=cache)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (cached,) = cache.glob("utkface-*.npz")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    # Relabelling a face is renaming its file: same count, same newest mtime, and the cache must see it.
    old = "39_1_20170116174525125.jpg.chip.jpg"
    before = os.stat(folder / old)
    (folder / old).rename(folder / "93_0_20170116174525125.jpg.chip.jpg")
    os.utime(folder / "93_0_20170116174525125.jpg.chip.jpg", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    # An interrupted build of a process that is gone left its temporary file.
    stale = cache / f"{cached.stem}.999999999.tmp.npz"
    stale.write_bytes(b"half a cache")
    # Caches of the earlier naming, which no build reads (a busy build's temporary file is kept), and another file.
    older = [cache / "utkface-0686b7609c56c35b.npz", cache / "utkface-0686b7609c56c35c.999999999.tmp.npz"]
    kept = [cache / f"utkface-0686b7609c56c35d.{os.getpid()}.tmp.npz", cache / "utkface-notes.npz"]
    for path in (*older, *kept):
        path.write_bytes(b"faces")
    second = utk.load(folder, size=32, cache_dir=cache)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in older)
    for path in kept:
        path.unlink()
    assert old not in set(second.names) and "93_0_20170116174525125.jpg.chip.jpg" in set(second.names)
    assert len(second) == len(first)
    # The new cache replaced the old one of the same source and size; the stale temporary file is gone.
    assert [p.name for p in cache.glob("utkface-*.npz")] != [cached.name]
    assert len(list(cache.glob("utkface-*.npz"))) == 1 and not stale.exists()
    # Another input size of the same source is another cache, kept beside it.
    utk.load(folder, size=16, cache_dir=cache)
    assert len(list(cache.glob("utkface-*.npz"))) == 2


@pytest.mark.parametrize("name", ["+5_0_0_2017.jpg", " 7_0_0_2017.jpg", "-0_1_0_2017.jpg", "٣٠_1_0_2017.jpg"])
def test_label_fields_are_ascii_digits(name):
    assert utk.parse_name(name) is None
    assert utk.parse_name("25_1_٣_2017.jpg") == utk.Label(25, 1, -1)


def test_per_face_csvs_and_caches_are_ignored_by_git():
    paths = ["reports/v22/predictions.csv", "reports/test-predictions.csv", "predictions.csv", "x/utkface-1.npz"]
    paths += ["runs2/age/manifest.csv"]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert sorted(result.stdout.split()) == sorted(paths)
    # No committed file is ignored by them.
    listed = subprocess.run(
        ["git", "ls-files", "-i", "-c", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert listed.stdout == ""


def test_face_measurements_choose_on_validation_by_default():
    import inspect

    from research import measure_faces

    assert inspect.signature(measure_faces.held_out_faces).parameters["split"].default == "val"


def test_studies_of_the_served_models_take_faces_from_the_split_they_trained_on(tmp_path):
    """research/ scripts score the served versions on validation or test faces: those of the newest versions' split
    (numerically newest: 12 after 3), never faces one of them trained on."""
    repo = tmp_path / "repo"
    assert utk.served_split_seed(repo) == utk.SPLIT_SEED  # nothing exported: the project's split
    for folder, seed in (("age/3", 7), ("age/12", 9), ("gender/2", 9), ("gender/.tmp-4", 7)):
        (repo / folder).mkdir(parents=True)
        (repo / folder / utk.TRAINING_RECORD).write_text(json.dumps({"seed": seed}))
    assert utk.served_split_seed(repo) == 9
    (repo / "gender/10").mkdir()
    (repo / "gender/10" / utk.TRAINING_RECORD).write_text(json.dumps({"seed": 7}))
    with pytest.raises(ValueError, match="different splits"):
        utk.served_split_seed(repo)
