"""What a training run or an exported version records and holds, for every script that reads one.

A run folder (``training.train``, ``training.ensemble``, ``training.swa``, ``training.widen``) keeps its network in
``model.keras`` beside its record, ``config.json``; an exported version keeps its SavedModel beside the same record as
``training_config.json``. Either can be a member of an average, a snapshot, or a starting point (``--init-from``).
Here: where a member's record and training history are, the split it was trained on, its weights by variable path,
and the served record (the temperature and the validation scores as served) that every run keeps and the export
reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common import contract, spec
from training import data as utk
from training import heads
from training import model as models
from training.export import HISTORY, RECORD, SAVEDMODEL

#: The project root: a mixture's record names its members by paths relative to it (training.ensemble runs from it).
ROOT = Path(__file__).resolve().parents[1]
#: The split seed of a record that names none: ``training.train``'s default ``--seed``.
SPLIT_SEED = utk.SPLIT_SEED


def member_folder(source: Path) -> Path:
    """Where a member's records live: a run's folder (its ``.keras`` file's parent), or the version folder itself."""
    return source.parent if source.suffix == ".keras" else source


def member_config(source: Path) -> dict:
    """The training record of a member: a run's ``config.json`` beside its ``.keras`` file, or a version's."""
    record = member_folder(source) / ("config.json" if source.suffix == ".keras" else RECORD)
    if not record.exists():
        raise FileNotFoundError(f"{source}: no training record at {record}")
    return json.loads(record.read_text())


def split_seed(configs: list[dict]) -> int:
    """The split seed every one of these training records shares; refuses records of different splits, since one
    network's training faces would then be in the validation faces the temperature and interval are fitted on."""
    try:
        return utk.shared_split_seed(configs)
    except ValueError as err:
        raise ValueError(f"{err}; refusing to average") from None


def histories(version: Path) -> list[tuple[str, Path]]:
    """The training histories behind an exported version, as (name, history.csv) pairs.

    A version trained by ``training.train`` has its own. A mixture (``training.ensemble``) has none: its record lists
    its members, and each member's history is used where it is still on disk (a version folder of the repository, or
    the run folder of a ``model.keras``); none found gives an empty list.
    """
    own = version / HISTORY
    if own.exists():
        return [(f"v{version.name}", own)]
    record = version / RECORD
    members = json.loads(record.read_text()).get("ensemble", []) if record.exists() else []
    found = []
    for i, member in enumerate(members, start=1):
        source = Path(member["source"])
        source = source if source.is_absolute() else ROOT / source
        folder = member_folder(source)
        if (folder / HISTORY).exists():
            name = folder.name if folder != source else f"{folder.parent.name}/{folder.name}"  # the run's, or gender/5
            found.append((f"member {i} ({name})", folder / HISTORY))
    return found


def init_weights(model: keras.Model, source: Path) -> list[str]:
    """Copies the weights whose variable path and shape match from an earlier model (only ever trained on this
    project's training split).

    Lets a long schedule build on an earlier run, a new head start on a trained trunk, and one task's network
    start from the other's trunk: age and gender share the trunk's layer names (training.model.build), so only the
    output layer starts fresh. Returns the variable paths copied.
    """
    if source.suffix == ".keras":
        found = {v.path: v.numpy() for v in keras.models.load_model(source).weights}
    else:
        folder = source / SAVEDMODEL if (source / SAVEDMODEL).is_dir() else source
        found = {v.name.removesuffix(":0"): v.numpy() for v in tf.saved_model.load(str(folder)).variables}
    # The first models' hidden dense layer had Keras's automatic name; it is "fc" now.
    found.update({"fc/" + k.split("/", 1)[1]: v for k, v in found.items() if k.startswith("dense") and "/" in k})
    copied = []
    for var in model.weights:
        value = found.get(var.path)
        if value is not None and tuple(value.shape) == tuple(var.shape):
            var.assign(value)
            copied.append(var.path)
    if not copied:
        raise ValueError(f"--init-from {source}: no weight matches this model by name and shape")
    return copied


def trained_network(task: str, source: Path, config: dict, size: int) -> keras.Model:
    """A plain network of the recorded architecture with the weights of ``source`` (a ``.keras`` run or an exported
    version folder), by their usual paths; every weight must be found."""
    net = models.build(task, size=size, widths=models.parse_widths(config.get("widths")))
    copied = init_weights(net, source)
    if len(copied) != len(net.weights):
        raise ValueError(f"{source}: {len(copied)} of {len(net.weights)} weights match; not this {task} network")
    return net


def served_record(raw: list[np.ndarray], task: str, part: utk.Dataset, estimate: str) -> dict:
    """The temperature fitted on a model's views of ``part`` and what it serves there, with and without flip TTA: the
    record every run keeps (``train``, ``training.ensemble``, ``training.swa``) and the export reads."""
    fit = heads.fit_temperature(raw, task, part.ages, part.genders)
    return {
        "temperature": fit["temperature"],
        "temperature_fit": fit["chosen"],
        "estimate": estimate,
        "val_served": score(raw, task, part, fit["temperature"], estimate),
        "val_served_no_tta": score(raw[:1], task, part, fit["temperature"], estimate),
    }


def score(
    raw: list[np.ndarray], task: str, part: utk.Dataset, temperature: float, estimate: str = heads.AGE_ESTIMATE
) -> dict:
    """Validation metrics of the served outputs (what the export will return) for the given views."""
    out = heads.flat(heads.summarize(raw, task, temperature=temperature, estimate=estimate))
    if task == "gender":
        p = out[spec.GENDER_OUTPUT]
        return {"accuracy": float((contract.is_female(p) == part.genders).mean())}
    err = np.abs(out[spec.AGE_OUTPUT] - part.ages)
    result = {"mae": float(err.mean())}
    if np.isfinite(out[spec.AGE_LOW_OUTPUT]).all():
        stats = heads.interval_stats(part.ages, out[spec.AGE_LOW_OUTPUT], out[spec.AGE_HIGH_OUTPUT])
        result["interval_coverage"], result["interval_width"] = stats["coverage"], stats["width"]
    return result
