"""Trains the age regressor or the gender classifier on UTKFace.

    python -m training.train --task age --data ../shared/datasets/UTKFace.tar.gz --budget-minutes 60

Every default below can be overridden from the command line; the resolved
config is written beside the model as ``config.json``, with the split manifest
and the training history.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import spec  # noqa: E402
from training import data as utk  # noqa: E402
from training import model as models  # noqa: E402

DEFAULTS = {
    "epochs": 80,
    "budget_minutes": None,
    "seed": 1337,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "patience": 12,
    "age_loss": "huber",
    "huber_delta": 5.0,
    "rebalance": False,
    "threads": 0,
    "limit": 0,
    "widths": "16,32,64,128",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=("age", "gender"))
    p.add_argument("--data", required=True, type=Path, help="UTKFace.tar.gz or a folder of UTKFace images")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<task>)")
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir(), help="decode cache ($AGEGENDER_CACHE)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=DEFAULTS["budget_minutes"],
        help="stop after the last epoch that fits in this wall-clock budget",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--patience", type=int, default=DEFAULTS["patience"], help="epochs without val_loss gain")
    p.add_argument("--age-loss", choices=("mse", "mae", "huber"), default=DEFAULTS["age_loss"])
    p.add_argument("--huber-delta", type=float, default=DEFAULTS["huber_delta"], help="in years")
    p.add_argument(
        "--rebalance",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS["rebalance"],
        help="seed project's rebalancing of the training split (1/3 of ages 0-4, none >= 80)",
    )
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="TensorFlow threads, 0 = all")
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="use at most N training images (smoke runs)")
    p.add_argument("--widths", default=DEFAULTS["widths"], help="channels per conv block")
    p.add_argument(
        "--finish-only",
        action="store_true",
        help="skip training: rerun the post-training steps on the run's saved best model",
    )
    args = p.parse_args(argv)
    args.out = args.out or Path("runs") / args.task
    return args


def make_loss(args: argparse.Namespace) -> keras.losses.Loss:
    if args.task == "gender":
        return keras.losses.BinaryCrossentropy()
    return {
        "mse": keras.losses.MeanSquaredError(),
        "mae": keras.losses.MeanAbsoluteError(),
        "huber": keras.losses.Huber(delta=args.huber_delta),
    }[args.age_loss]


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)

    data = utk.load(args.data, cache_dir=args.cache_dir)
    splits = utk.split(data, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    utk.write_manifest(data, splits, args.out / "manifest.csv")
    train, val = data.subset(np.flatnonzero(splits == "train")), data.subset(np.flatnonzero(splits == "val"))
    if args.rebalance:
        train = train.subset(utk.rebalance(train, seed=args.seed))
    if args.limit:
        train, val = (
            train.subset(np.arange(min(args.limit, len(train)))),
            val.subset(np.arange(min(args.limit, len(val)))),
        )
    y = "ages" if args.task == "age" else "genders"
    logging.info("train %d, val %d images of %dx%d", len(train), len(val), spec.IMAGE_SIZE, spec.IMAGE_SIZE)

    augment = models.augmentation(seed=args.seed)

    def dataset(part: utk.Dataset, training: bool) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((part.images, getattr(part, y).astype("float32")[:, None]))
        if training:
            ds = ds.shuffle(len(part), seed=args.seed, reshuffle_each_iteration=True)
        ds = ds.batch(args.batch_size)
        if training:
            ds = ds.map(
                lambda x, t: (
                    tf.cast(tf.clip_by_value(augment(tf.cast(x, "float32"), training=True), 0, 255), "uint8"),
                    t,
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        return ds.prefetch(tf.data.AUTOTUNE)

    widths = tuple(int(w) for w in args.widths.split(","))
    model = models.build(args.task, widths=widths)
    metrics = (
        [keras.metrics.MeanAbsoluteError(name="mae")]
        if args.task == "age"
        else [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]
    )
    compile_args = {"loss": make_loss(args), "metrics": metrics}
    model.compile(optimizer=keras.optimizers.AdamW(args.lr, weight_decay=args.weight_decay), **compile_args)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(
        image_size=spec.IMAGE_SIZE,
        channel_order=spec.CHANNEL_ORDER,
        resize=str(spec.RESIZE_METHOD),
        data_summary=data.summary.line(args.data),
        n_train=len(train),
        n_val=len(val),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        argv=sys.argv[1:],
    )

    best = args.out / "model.keras"
    if args.finish_only:
        # Keep the config of the run that trained the model; only the post-training record changes.
        config = {**json.loads((args.out / "config.json").read_text()), "finish_only_argv": sys.argv[1:]}
    else:
        (args.out / "config.json").write_text(json.dumps(config, indent=2))
        callbacks = [
            BudgetAndCosine(args.lr, args.epochs, args.budget_minutes),
            keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience),
            keras.callbacks.CSVLogger(args.out / "history.csv"),
        ]
        start = time.time()
        model.fit(
            dataset(train, True),
            validation_data=dataset(val, False),
            epochs=args.epochs,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        config["train_seconds"] = round(time.time() - start, 1)

    # Post-training step, chosen on the validation split: clean BatchNorm statistics, kept only if they help.
    model = keras.models.load_model(best)
    model.compile(**compile_args)  # a reloaded Huber loss forgets its delta
    before = model.evaluate(dataset(val, False), verbose=0, return_dict=True)
    models.recalibrate_batchnorm(model, train.images, seed=args.seed)
    after = model.evaluate(dataset(val, False), verbose=0, return_dict=True)
    kept = after["loss"] < before["loss"]
    config["bn_recalibration"] = {"kept": kept, "val_before": before, "val_after": after}
    if kept:
        model.save(best)
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    logging.info(
        "BatchNorm recalibration: val %s -> %s (%s)",
        before,
        after,
        "kept" if kept else "dropped",
    )
    logging.info("best model (lowest val_loss) in %s", best)
    return best


class BudgetAndCosine(keras.callbacks.Callback):
    """Cosine learning-rate decay over whichever runs out first, epochs or the time budget.

    Stops before an epoch that would overrun the budget, so a budgeted run still
    ends on an annealed learning rate and a full validation pass.
    """

    def __init__(self, lr: float, epochs: int, budget_minutes: float | None, warmup: int = 1):
        super().__init__()
        self.lr, self.epochs, self.warmup = lr, epochs, warmup
        self.budget = budget_minutes * 60 if budget_minutes else math.inf
        self.start = self.epoch_start = time.time()
        self.longest_epoch = 0.0

    def _progress(self, epoch: int) -> float:
        return min(1.0, max(epoch / self.epochs, (time.time() - self.start) / self.budget))

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.time()
        scale = (
            (epoch + 1) / (self.warmup + 1)
            if epoch < self.warmup
            else 0.5 * (1 + math.cos(math.pi * self._progress(epoch)))
        )
        self.model.optimizer.learning_rate.assign(max(self.lr * scale, self.lr * 0.01))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())
        self.longest_epoch = max(self.longest_epoch, time.time() - self.epoch_start)
        if time.time() - self.start + self.longest_epoch > self.budget:
            logging.info("time budget reached after epoch %d", epoch + 1)
            self.model.stop_training = True


if __name__ == "__main__":
    main()
