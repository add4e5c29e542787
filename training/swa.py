"""Averages the weights of snapshots from one training trajectory into one network (stochastic weight averaging).

    python -m training.swa --task age --data ../shared/datasets/UTKFace.tar.gz \\
        --snapshots model_repository/age/10 model_repository/age/12 runs/age-cycle1/model.keras --out runs/swa
    python -m training.export --runs runs/swa --tasks age

Each high restart of the learning rate (``train.py --init-from ... --lr 1e-3``) ends in a nearby low-loss point of
the same basin, and the mean of such points lies nearer the basin's flat centre than any one of them (Izmailov et
al., 2018, "Averaging Weights Leads to Wider Optima and Better Generalization"). Unlike ``training.ensemble``,
which averages outputs at N times the work per face, this averages weights: one network, the served compute of
any one snapshot.

A mean of weights is not a mean of BatchNorm statistics, so the moving statistics are estimated again on clean
training faces (``model.recalibrate_batchnorm``), then the temperature is fitted on the validation split as after
training. Every snapshot must share the split (the recorded seed) and the architecture; the record keeps each
snapshot's own validation score beside the average's, so the choice is made, and can be read, on validation only.
A snapshot's score is as saved: an epoch's checkpoint (``--keep-epochs``) still holds the BatchNorm statistics of
augmented faces, so it reads worse than the same weights after ``train.py``'s post-training re-estimation would.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from common import spec  # noqa: E402
from training import (
    cli,  # noqa: E402
    heads,  # noqa: E402
)
from training import data as utk  # noqa: E402
from training import model as models  # noqa: E402
from training.export import HISTORY  # noqa: E402
from training.runs import member_config, served_record, split_seed, trained_network  # noqa: E402

log = logging.getLogger(__name__)


def average(task: str, sources: list[Path], size: int) -> tuple[keras.Model, list[keras.Model], list[dict]]:
    """The network whose every weight is the snapshots' mean, and the snapshots themselves (for their scores)."""
    configs = [member_config(s) for s in sources]
    split_seed(configs)
    shapes = {models.parse_widths(c.get("widths")) for c in configs}
    if len(shapes) != 1:
        raise ValueError(f"snapshots have different architectures (widths {sorted(shapes)}); refusing to average")
    sizes = {c.get("image_size") or size for c in configs}
    if sizes != {size}:
        raise ValueError(f"snapshots were trained at {sorted(sizes)} px, the served {task} input is {size}; refusing")
    nets = [trained_network(task, s, c, size) for s, c in zip(sources, configs, strict=True)]
    mean = models.build(task, size=size, widths=shapes.pop())
    for i, target in enumerate(mean.weights):
        target.assign(np.mean([net.weights[i].numpy() for net in nets], axis=0))
    return mean, nets, configs


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=models.TASKS)
    p.add_argument("--data", required=True, type=cli.data_source, help="UTKFace.tar.gz or a folder of UTKFace images")
    p.add_argument("--snapshots", required=True, nargs="+", type=Path, help="runs' .keras files or exported versions")
    p.add_argument("--out", type=Path, default=Path("runs/swa"), help="writes <out>/<task>/ for training.export")
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir())
    p.add_argument("--estimate", choices=heads.AGE_ESTIMATES, default=heads.AGE_ESTIMATE)
    p.add_argument("--bn-seed", type=int, default=0, help="order of the clean faces BatchNorm is re-estimated on")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(args.snapshots) < 2:
        p.error("--snapshots needs at least two")
    if missing := [str(m) for m in args.snapshots if not m.exists()]:
        p.error(f"--snapshots: no such file or folder: {', '.join(missing)}")

    size = spec.image_size(args.task)
    model, nets, configs = average(args.task, args.snapshots, size)
    data = cli.load(args.data, size=size, cache_dir=args.cache_dir)
    seed = split_seed(configs)
    splits = utk.split(data, seed=seed)
    train = data.subset(np.flatnonzero(splits == "train"))
    val = data.subset(np.flatnonzero(splits == "val"))

    def served(net: keras.Model) -> dict:
        return served_record(heads.raw_views(net, val.images), args.task, val, args.estimate)

    snapshots = []
    for source, net in zip(args.snapshots, nets, strict=True):
        snapshots.append({"source": str(source), "val_served": served(net)["val_served"]})
        log.info("snapshot %s: validation as served %s", source, snapshots[-1]["val_served"])
    models.recalibrate_batchnorm(model, train.images, seed=args.bn_seed)
    record = {
        **configs[-1],  # the architecture and training record of the last snapshot, which the average shares
        "task": args.task,
        "seed": seed,
        "image_size": size,
        "tta": True,
        **served(model),
        "weight_average": {"bn_seed": args.bn_seed, "snapshots": snapshots},
    }
    for stale in ("post_training", "interval_calibration", "train_seconds", "ensemble"):
        record.pop(stale, None)
    log.info(
        "weight average of %d: temperature %.3f, validation as served %s",
        len(nets),
        record["temperature"],
        record["val_served"],
    )
    out = args.out / args.task
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "config.json").write_text(json.dumps(record, indent=2))
    # The training curves travel with the export (the evaluation report plots them): the last snapshot's run's.
    last = args.snapshots[-1]
    history = last.parent / HISTORY if last.suffix == ".keras" else last / HISTORY
    if history.exists():
        shutil.copy(history, out / HISTORY)
    return out


if __name__ == "__main__":
    main()
