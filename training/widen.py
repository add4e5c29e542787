"""Grows a trained network into a wider one that computes the same function (Net2WiderNet).

    python -m training.widen --task age --source model_repository/age/18 --widths 16,32,96,192 --out runs/age-w18
    python -m training.train --task age ... --init-from runs/age-w18/model.keras --widths 16,32,96,192

Training a wider network from scratch costs hours on two cores before it catches up with one that has had many
cycles. Widening keeps what was learnt: each new channel of a conv layer copies an existing one (kernel and
BatchNorm statistics alike), and the layer reading it splits the copied channel's outgoing weights between the
copies, so the sum it computes is unchanged (Chen, Goodfellow and Shlens, 2016, "Net2Net"). Copies see the same
batch, so BatchNorm's batch statistics match too and the function is preserved in training mode as well.

The split is random per (copy, output channel) rather than an even half, so the copies get different gradients and
grow apart once training continues; with an even split they would stay identical forever and add nothing.

The output is a run folder (``model.keras`` and ``config.json``, the source's training record with the new widths),
usable as ``--init-from`` and as a ``training.swa`` snapshot beside the wide run that continues from it.
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
from training import cli  # noqa: E402
from training import model as models  # noqa: E402
from training.runs import member_config, trained_network  # noqa: E402

log = logging.getLogger(__name__)

#: Function-preservation tolerance (float32 sums in another order), on probabilities.
TOLERANCE = 1e-4


def _split(mapping: np.ndarray, n_out: int, rng: np.random.Generator) -> np.ndarray:
    """Factors (len(mapping), n_out) that sum to 1 over the copies of each source channel, per output column."""
    r = rng.uniform(0.5, 1.5, (len(mapping), n_out))
    totals = np.zeros((mapping.max() + 1, n_out))
    np.add.at(totals, mapping, r)
    return r / totals[mapping]


def widen(weights: dict[str, np.ndarray], widths: tuple[int, ...], *, seed: int = 0) -> dict[str, np.ndarray]:
    """The weights of ``build(widths=widths)`` computing the same function as ``weights`` (paths as
    ``conv{i}_{j}/kernel``, ``bn{i}_{j}/gamma``..., ``fc/kernel``). Every other weight is passed through."""
    old = tuple(weights[f"conv{i}_1/kernel"].shape[-1] for i in range(len(widths)))
    if f"conv{len(widths)}_0/kernel" in weights:
        raise ValueError(f"the source has more than {len(widths)} blocks; widening keeps the depth")
    if any(n < o for n, o in zip(widths, old, strict=True)):
        raise ValueError(f"widths {widths} narrow the source's {old}; widening only adds channels")
    rng = np.random.default_rng(seed)
    out = dict(weights)
    previous = np.arange(weights["conv0_0/kernel"].shape[2])  # the RGB input: never copied
    for i, width in enumerate(widths):
        for j in range(2):
            kernel = weights[f"conv{i}_{j}/kernel"]
            c = kernel.shape[-1]
            mapping = np.concatenate([np.arange(c), rng.integers(0, c, width - c)])
            # Input side: the copies of one source channel share its weight by the split factors; output side: each
            # new channel is a copy of the source channel it maps to.
            factors = _split(previous, width, rng).astype(kernel.dtype)
            out[f"conv{i}_{j}/kernel"] = kernel[:, :, previous][..., mapping] * factors
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                out[f"bn{i}_{j}/{name}"] = weights[f"bn{i}_{j}/{name}"][mapping]
            previous = mapping
    fc = weights["fc/kernel"]  # global average pooling keeps channels, so the head reads them as the last conv
    out["fc/kernel"] = fc[previous] * _split(previous, fc.shape[1], rng).astype(fc.dtype)
    return out


def widened_network(task: str, source: keras.Model, widths: tuple[int, ...], size: int, *, seed: int = 0):
    """``source`` (a plain ``model.build`` network) grown to ``widths``, checked to give the same outputs."""
    grown = widen({v.path: v.numpy() for v in source.weights}, widths, seed=seed)
    net = models.build(task, size=size, widths=widths)
    for var in net.weights:
        if var.path not in grown or tuple(grown[var.path].shape) != tuple(var.shape):
            raise ValueError(f"widened weights have no {var.path} of shape {tuple(var.shape)}")
        var.assign(grown[var.path])
    faces = np.random.default_rng(seed).integers(0, 256, (16, size, size, 3), np.uint8)
    diff = float(np.max(np.abs(source.predict(faces, verbose=0) - net.predict(faces, verbose=0))))
    if diff > TOLERANCE:
        raise AssertionError(f"widening changed the outputs by {diff:.2e} (> {TOLERANCE})")
    return net, diff


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=models.TASKS, required=True)
    p.add_argument("--source", type=Path, required=True, help="a run's .keras file or an exported version folder")
    p.add_argument("--widths", required=True, type=cli.widths, help="channels per conv block, each >= the source's")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="which channels are copied, and the split factors")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.source.exists():
        p.error(f"--source {args.source}: no such file or folder")

    try:
        config = member_config(args.source)
        size = config.get("image_size") or spec.image_size(args.task)
        net, diff = widened_network(
            args.task,
            trained_network(args.task, args.source, config, size),
            models.parse_widths(args.widths),
            size,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as err:  # narrower or fewer widths, another network: the operator's to fix
        raise SystemExit(f"error: {err}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    net.save(args.out / "model.keras")
    record = {
        **config,
        "out": str(args.out),
        "widths": args.widths,
        "widened_from": str(args.source),
        "widened_from_widths": config.get("widths"),
        "widen_seed": args.seed,
        "widen_max_output_diff": diff,
        "params": net.count_params(),
    }
    (args.out / "config.json").write_text(json.dumps(record, indent=2))
    log.info(
        "%s -> %s (widths %s, %d params; outputs differ by %.1e)",
        args.source,
        args.out,
        args.widths,
        net.count_params(),
        diff,
    )
    return args.out / "model.keras"


if __name__ == "__main__":
    main()
