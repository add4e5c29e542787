"""Averages independently trained networks of one task into one model, and makes it a run that exports as usual.

    python -m training.ensemble --task age --data ../shared/datasets/UTKFace.tar.gz \\
        --members model_repository/age/8 runs/age-snap/model.keras --out runs/ensemble
    python -m training.export --runs runs/ensemble --tasks age

Networks that start from different points or see the faces in another order make partly independent errors, and
the average of their distributions errs less than either (age: the mixture of the members' distributions over the
117 ages, read as the served estimate; gender: the mean of the members' probabilities). The result is still one
Keras model per task, one SavedModel, one Triton model: the server, the clients and the interval's calibration see
a model like any other, with twice the CNN work per face for two members.

Every member must be trained on the same split (the recorded split seed), or one member's training faces would be
in the validation faces the temperature and the interval are fitted on. The temperature is fitted again on the
validation split for the average, and the record keeps each member's own validation score beside the average's,
so the gain is there to read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from training.runs import member_config, served_record, split_seed, trained_network  # noqa: E402

log = logging.getLogger(__name__)


def architecture(task: str, member_configs: list[dict], size: int) -> keras.Model:
    """The untrained ensemble: one network per member record, each named ``member<i>``.

    The name prefixes every weighted layer (``member0_conv0_0/kernel``), so each variable keeps a unique path in a
    saved ``.keras`` file and in the SavedModel, where ``training.calibrate`` reads an exported version's weights.
    """
    inputs = keras.Input((size, size, 3), dtype="uint8", name=spec.INPUT_NAME)
    outputs = []
    for i, config in enumerate(member_configs):
        net = models.build(task, size=size, widths=models.parse_widths(config.get("widths")), name=f"member{i}")
        outputs.append(net(inputs))
    # Age: a mixture of distributions is their mean, still a distribution over the same ages.
    out = keras.layers.Average(name="average")(outputs) if len(outputs) > 1 else outputs[0]
    return keras.Model(inputs, out, name=task)


def build(task: str, sources: list[Path], size: int) -> tuple[keras.Model, list[dict]]:
    """The ensemble with each member's trained weights (from a ``.keras`` run or an exported version folder)."""
    configs = [member_config(s) for s in sources]
    split_seed(configs)
    model = architecture(task, configs, size)
    for i, source in enumerate(sources):
        net = model.get_layer(f"member{i}")
        # The member's weights, loaded by their usual paths, go to the same paths under the member's prefix.
        plain = trained_network(task, source, configs[i], size)
        values = {f"{net.name}_{w.path}": w for w in plain.weights}
        for target in net.weights:
            target.assign(values.pop(target.path))
        assert not values, f"weights left over: {sorted(values)}"
    return model, configs


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=models.TASKS)
    p.add_argument("--data", required=True, type=cli.data_source, help="UTKFace.tar.gz or a folder of UTKFace images")
    p.add_argument("--members", required=True, nargs="+", type=Path, help="runs' .keras files or exported versions")
    p.add_argument("--out", type=Path, default=Path("runs/ensemble"), help="writes <out>/<task>/ for training.export")
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir())
    p.add_argument("--estimate", choices=heads.AGE_ESTIMATES, default=heads.AGE_ESTIMATE)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if missing := [str(m) for m in args.members if not m.exists()]:
        p.error(f"--members: no such file or folder: {', '.join(missing)}")
    size = spec.image_size(args.task)
    try:
        model, configs = build(args.task, args.members, size)
    except (ValueError, FileNotFoundError) as err:  # another network, another split, no record: one line
        raise SystemExit(f"error: {err}") from None
    data = cli.load(args.data, size=size, cache_dir=args.cache_dir)
    seed = split_seed(configs)
    val = utk.part(data, "val", seed=seed)

    members, member_raw = [], []
    for i, (source, config) in enumerate(zip(args.members, configs, strict=True)):
        raw = heads.raw_views(model.get_layer(f"member{i}"), val.images)
        member_raw.append(raw)
        served = served_record(raw, args.task, val, args.estimate)
        members.append({"source": str(source), "val_served": served["val_served"], "config": config})
        log.info("member %d (%s): validation as served %s", i, source, members[-1]["val_served"])
    # The average's output is its members' mean (architecture()), so its views are theirs averaged, not a second pass.
    raw = [np.mean(views, axis=0) for views in zip(*member_raw, strict=True)]
    record = {
        "task": args.task,
        "seed": seed,
        "image_size": size,
        "tta": True,
        **served_record(raw, args.task, val, args.estimate),
        "ensemble": members,
    }
    log.info(
        "average of %d: temperature %.3f, validation as served %s",
        len(members),
        record["temperature"],
        record["val_served"],
    )
    out = args.out / args.task
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "config.json").write_text(json.dumps(record, indent=2))
    return out


if __name__ == "__main__":
    main()
