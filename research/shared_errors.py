"""Which validation faces several gender networks all get wrong, per age band: what no mixture of them can fix.

    python -m research.shared_errors --data ../shared/datasets/UTKFace.tar.gz \\
        --members model_repository/gender/5 runs/gender-s61-A-r2/model.keras runs/gender-s61-B-r2/model.keras

A mixture of networks (``training.ensemble``) corrects a face only where its members disagree; a face that every
member labels wrongly stays wrong whatever the weights. So before training another member, this counts, on the
validation split (never the example portraits), each member's errors, the faces all of them miss, and the faces at
least one gets right, overall and per band of true age (``heads.AGE_BANDS``). Labels are read as served: flip TTA,
each member's own temperature (which cannot move a label), ``contract.is_female``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from common import contract, spec  # noqa: E402
from training import data as utk  # noqa: E402
from training import ensemble, heads, runs  # noqa: E402


def shared_errors(wrong: np.ndarray, ages: np.ndarray, bands=heads.AGE_BANDS) -> dict[str, dict]:
    """Counts of a ``(members, faces)`` boolean error matrix, for all faces and per band of ``ages`` (inclusive).

    Per group: ``n`` faces, each member's ``errors``, ``all_wrong`` (no mixture can fix) and ``any_right`` accuracy
    (the best any per-face choice among the members could reach). Bands without faces are left out.
    """
    wrong = np.asarray(wrong, dtype=bool)
    groups = {"all": np.ones(wrong.shape[1], dtype=bool)}
    groups.update({f"{lo}-{hi}": (ages >= lo) & (ages <= hi) for lo, hi in bands})
    out = {}
    for name, m in groups.items():
        if not m.any():
            continue
        out[name] = {
            "n": int(m.sum()),
            "errors": [int(w) for w in wrong[:, m].sum(axis=1)],
            "all_wrong": int(wrong[:, m].all(axis=0).sum()),
            "any_right": float(1 - wrong[:, m].all(axis=0).mean()),
        }
    return out


def member_errors(sources: list[Path], data: Path, cache_dir: Path | None = None) -> tuple[np.ndarray, utk.Dataset]:
    """Each member's wrong labels on the validation split of their shared split seed, and those faces."""
    size = spec.image_size("gender")
    model, configs = ensemble.build("gender", sources, size)
    faces = utk.load(data, size=size, cache_dir=cache_dir or utk.default_cache_dir())
    val = utk.part(faces, "val", seed=runs.split_seed(configs))
    wrong = []
    for i in range(len(sources)):
        raw = heads.raw_views(model.get_layer(f"member{i}"), val.images)
        p = heads.flat(heads.summarize(raw, "gender"))[spec.GENDER_OUTPUT]
        wrong.append(contract.is_female(p) != val.genders.astype(bool))
    return np.array(wrong), val


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="UTKFace.tar.gz or a folder of UTKFace images")
    p.add_argument("--members", required=True, nargs="+", type=Path, help="runs' .keras files or exported versions")
    args = p.parse_args(argv)
    wrong, val = member_errors(args.members, args.data)
    print("| faces | n | errors per member | all wrong | accuracy if any member were right |")
    print("|---|---|---|---|---|")
    for name, row in shared_errors(wrong, val.ages).items():
        errors = " / ".join(str(e) for e in row["errors"])
        print(f"| {name} | {row['n']} | {errors} | {row['all_wrong']} | {row['any_right']:.4f} |")


if __name__ == "__main__":
    main()
