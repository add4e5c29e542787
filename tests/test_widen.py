"""training.widen: a trained network grown wider computes the same function, in inference and in training mode.

The copies of a channel must not stay identical (an even split would make them learn the same thing forever), a
width that narrows or a depth that differs is refused, and the command's output is a run that training.swa and
--init-from read like any other."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from common import spec
from training import model as models
from training import runs, swa, widen

from .test_ensemble import WIDTHS, infer, member

SIZE = spec.image_size("age")


def trained_looking(task: str, widths, *, dropout: float = 0.3, seed: int = 3) -> keras.Model:
    """A network whose BatchNorm parameters and statistics are far from their initial 1s and 0s, so a widening that
    mixed channels up or forgot to copy the statistics would change the outputs."""
    keras.utils.set_random_seed(seed)
    net = models.build(task, widths=widths, dropout=dropout)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(0.5, 2, n)]
            )
    return net


def faces(n: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


@pytest.mark.parametrize("task", ["age", "gender"])
def test_the_wider_network_gives_the_same_outputs(task):
    source = trained_looking(task, (4, 8))
    net, diff = widen.widened_network(task, source, (6, 13), spec.image_size(task))
    assert net.get_layer("conv1_1").kernel.shape == (3, 3, 13, 13)
    assert net.count_params() > source.count_params()
    x = faces() if task == "age" else faces()[:, :64, :64]
    np.testing.assert_allclose(infer(net, x), infer(source, x), atol=1e-5)
    assert diff <= widen.TOLERANCE


def test_batch_statistics_match_too_so_training_continues_from_the_same_function():
    # Dropout off: in training mode the only difference left is BatchNorm using the batch's own statistics.
    source = trained_looking("age", (4, 8), dropout=0.0)
    grown = widen.widen({v.path: v.numpy() for v in source.weights}, (7, 10), seed=1)
    net = models.build("age", widths=(7, 10), dropout=0.0)
    for var in net.weights:
        var.assign(grown[var.path])
    x = faces(16)
    np.testing.assert_allclose(np.asarray(net(x, training=True)), np.asarray(source(x, training=True)), atol=1e-5)


def test_copies_start_apart_and_each_new_channel_copies_a_trained_one():
    source = trained_looking("age", (4, 8))
    before = {v.path: v.numpy() for v in source.weights}
    after = widen.widen(before, (8, 16), seed=2)
    gamma_old, gamma_new = before["bn1_1/gamma"], after["bn1_1/gamma"]
    np.testing.assert_array_equal(gamma_new[:8], gamma_old)  # the original channels keep their places
    assert set(gamma_new[8:].tolist()) <= set(gamma_old.tolist())  # every new channel copies one
    # Inputs that are copies of one source channel share its weights by unequal factors: a copy differs from the
    # original, yet together they sum to it.
    k_old, k_new = before["conv1_1/kernel"], after["conv1_1/kernel"]
    copy = 8 + int(np.flatnonzero(np.isin(after["bn1_0/gamma"][8:], after["bn1_0/gamma"][:8]))[0])
    original = int(np.flatnonzero(after["bn1_0/gamma"][:8] == after["bn1_0/gamma"][copy])[0])
    assert not np.allclose(k_new[:, :, copy, :8], k_new[:, :, original, :8])
    group = [m for m in range(16) if after["bn1_0/gamma"][m] == after["bn1_0/gamma"][original]]
    np.testing.assert_allclose(k_new[:, :, group, :8].sum(axis=2), k_old[:, :, original, :], rtol=1e-5, atol=1e-6)


def test_narrower_or_deeper_targets_are_refused():
    weights = {v.path: v.numpy() for v in models.build("age", widths=(4, 8)).weights}
    with pytest.raises(ValueError, match="narrow"):
        widen.widen(weights, (4, 6))
    with pytest.raises(ValueError, match="more than 1 blocks"):
        widen.widen(weights, (8,))


def test_the_command_writes_a_run_that_swa_and_init_from_read(tmp_path):
    source, net = member(tmp_path, "a", "age", 1)
    out = widen.main(["--task", "age", "--source", str(source), "--widths", "6,12", "--out", str(tmp_path / "w")])
    record = json.loads((out.parent / "config.json").read_text())
    assert record["widths"] == "6,12" and record["widened_from_widths"] == WIDTHS and record["seed"] == 1337
    assert record["widen_max_output_diff"] <= widen.TOLERANCE
    x = faces(4)
    np.testing.assert_allclose(infer(keras.models.load_model(out), x), infer(net, x), atol=1e-5)
    # training.swa accepts it as a snapshot (same widths and split), and a wide run starts from all of its weights.
    mean, nets, _ = swa.average("age", [out, out], SIZE)
    assert mean.get_layer("conv1_1").kernel.shape == (3, 3, 12, 12)
    fresh = models.build("age", widths=(6, 12))
    assert len(runs.init_weights(fresh, out)) == len(fresh.weights)
