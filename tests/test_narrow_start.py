"""The repository view a cold start runs on (serving/runtime/narrow_start.py): the decoding models with one instance,
everything else as it is, and back to plain links once they have all theirs. The served sequence (one instance at
the first answer, two once the first answer is out) is checked on a real server in tests/test_first_load.py."""

from __future__ import annotations

import shutil
from pathlib import Path

from common import contract
from serving.runtime import narrow_start
from serving.runtime.narrow_start import NarrowStart, instances, one_instance

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"


def _repository(tmp_path: Path) -> Path:
    """The committed configs and the decoding models' code, no model weights (the view never reads them)."""
    repo = tmp_path / "repo"
    keep = {"config.pbtxt", "configs", "cpu.pbtxt", "1", "model.py", "warmup", "README.md"}
    shutil.copytree(
        REPOSITORY, repo, symlinks=True, ignore=lambda d, names: [n for n in names if n not in keep and "." in n]
    )
    return repo


def test_a_config_with_one_group_of_several_gets_one_and_any_other_is_left_alone():
    two = 'name: "m"\n# count: 5, a comment\ninstance_group [ { kind: KIND_CPU count: 2 } ]\nmax_batch_size: 8\n'
    assert instances(two) == 2
    assert one_instance(two) == two.replace("count: 2", "count: 1")
    assert instances(one_instance(two)) == 1
    for config in (
        'name: "m"\n',  # no group: Triton's default
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
        "instance_group [ { count: 2 kind: KIND_CPU }, { count: 2 kind: KIND_GPU } ]",  # several groups
        "instance_group [ { kind: KIND_CPU } ]",  # no count
    ):
        assert one_instance(config) is None, config


def test_the_view_starts_the_decoding_models_with_one_instance_and_links_everything_else(tmp_path):
    repo = _repository(tmp_path)
    narrow = NarrowStart(repo, tmp_path / "run" / narrow_start.VIEW_FOLDER, "cpu")
    (tmp_path / "run").mkdir()
    view = narrow.build()
    assert narrow.narrowed == {contract.PREPROCESS_CROP_MODEL: 2, contract.PREPROCESS_MODEL: 2}
    assert sorted(p.name for p in view.iterdir()) == sorted(p.name for p in repo.iterdir())
    for entry in view.iterdir():
        if entry.name in narrow_start.MODELS:
            assert not entry.is_symlink() and entry.is_dir()
            config = entry / "configs" / "cpu.pbtxt"
            assert not config.is_symlink() and instances(config.read_text()) == 1
            assert config.read_text() == one_instance((repo / entry.name / "configs" / "cpu.pbtxt").read_text())
            # Every other file is the repository's own, through a link: the code, the production config, warm-ups.
            assert (entry / "config.pbtxt").resolve() == (repo / entry.name / "config.pbtxt").resolve()
            assert (entry / "1" / "model.py").read_bytes() == (repo / entry.name / "1" / "model.py").read_bytes()
        else:
            assert entry.is_symlink() and entry.resolve() == (repo / entry.name).resolve()
    assert (view.stat().st_mode & 0o777) == 0o700
    # The repository itself is untouched.
    assert instances((repo / contract.PREPROCESS_MODEL / "configs" / "cpu.pbtxt").read_text()) == 2


def test_the_production_config_is_the_one_narrowed_where_triton_reads_it(tmp_path):
    repo = _repository(tmp_path)
    view = NarrowStart(repo, tmp_path / "view", "default").build()
    model = view / contract.PREPROCESS_MODEL
    production = (repo / contract.PREPROCESS_MODEL / "config.pbtxt").read_text()
    if (count := instances(production)) is not None and count > 1:
        assert instances((model / "config.pbtxt").read_text()) == 1
        assert (model / "configs").is_symlink()  # the CPU config, not read under "default", stays linked
    else:
        assert model.is_symlink()


def test_widening_gives_the_counts_until_linked_and_linking_leaves_only_links(tmp_path):
    repo = _repository(tmp_path)
    narrow = NarrowStart(repo, tmp_path / "view", "cpu")
    view = narrow.build()
    counts = narrow.widen()
    assert counts == {contract.PREPROCESS_CROP_MODEL: 2, contract.PREPROCESS_MODEL: 2}
    narrow.link(contract.PREPROCESS_MODEL)
    # One whose load failed is not linked: it is still there to widen (a restarted Triton starts it narrowed).
    assert narrow.widen() == {contract.PREPROCESS_CROP_MODEL: 2}
    narrow.link(contract.PREPROCESS_CROP_MODEL)
    assert narrow.widen() == {}
    assert all(entry.is_symlink() for entry in view.iterdir()), [p for p in view.iterdir() if not p.is_symlink()]
    assert instances((view / contract.PREPROCESS_MODEL / "configs" / "cpu.pbtxt").read_text()) == 2
    # A version published later is seen through the view, as a rollout needs.
    (repo / contract.PREPROCESS_MODEL / "2").mkdir()
    assert (view / contract.PREPROCESS_MODEL / "2").is_dir()
    # Built again in the same place (a server started again): a fresh view.
    assert NarrowStart(repo, tmp_path / "view", "cpu").build() == view
    assert not (view / contract.PREPROCESS_MODEL).is_symlink()
