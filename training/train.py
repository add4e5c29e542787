"""Trains the age network (a distribution over ages, or a regressor) or the gender classifier on UTKFace.

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

from common import contract, spec  # noqa: E402
from training import data as utk  # noqa: E402
from training import heads  # noqa: E402
from training import model as models  # noqa: E402

DEFAULTS = {
    "epochs": 80,
    "budget_minutes": None,
    "seed": 1337,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "patience": 12,
    "age_loss": "ldl+l1",
    "huber_delta": 5.0,
    "ema": 0.0,
    "tta": True,
    "estimate": heads.AGE_ESTIMATE,
    "rebalance": False,
    "tail_weight": 0.0,
    "child_weight": 1.0,
    "mixup": 0.0,
    "aux_age": 0.0,
    "augment": "standard",
    "threads": 0,
    "limit": 0,
    "widths": "16,32,64,128",
    "schedule": "cosine",
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
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="the train/val/test split's seed (keep it)")
    p.add_argument(
        "--order-seed",
        type=int,
        default=None,
        help="seed of initialisation, shuffling and augmentation (default: --seed); another value trains a "
        "different member for an ensemble on the same split",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument("--patience", type=int, default=DEFAULTS["patience"], help="epochs without val_loss gain")
    p.add_argument(
        "--age-loss",
        choices=heads.AGE_LOSSES,
        default=DEFAULTS["age_loss"],
        help="huber trains a regression head; ce and ldl the 117-bin head that gives the interval",
    )
    p.add_argument("--huber-delta", type=float, default=DEFAULTS["huber_delta"], help="in years")
    p.add_argument(
        "--ema",
        type=float,
        default=DEFAULTS["ema"],
        help="decay of the exponential moving average of the weights that is validated and kept; 0 = off",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS["tta"],
        help="fold flip test-time augmentation into the export (and fit the temperature with it)",
    )
    p.add_argument(
        "--estimate",
        choices=heads.AGE_ESTIMATES,
        default=DEFAULTS["estimate"],
        help="age only: how the served age is read from the distribution (scored after training, exported)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="start from the weights of an earlier model (a .keras file or an exported version folder, of this "
        "task or the other's trunk); layers whose name and shape match are copied, a new head starts fresh",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out from its last epoch (weights, optimizer, EMA, schedule)",
    )
    p.add_argument(
        "--rebalance",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS["rebalance"],
        help="seed project's rebalancing of the training split (1/3 of ages 0-4, none >= 80)",
    )
    p.add_argument(
        "--tail-weight",
        type=float,
        default=DEFAULTS["tail_weight"],
        help="weigh each face's loss by (faces in its 10-year band) ** -POWER (data.tail_weights): the rare old faces "
        "(for gender too; ages 0-9 get about the mean weight, so --child-weight names the children); 0 = off",
    )
    p.add_argument(
        "--child-weight",
        type=float,
        default=DEFAULTS["child_weight"],
        help="gender only: weigh the loss of faces under ten years this many times an older face's "
        "(data.child_weights); 1 = off",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=DEFAULTS["mixup"],
        help="gender only: blend training faces and labels in pairs, weight ~ Beta(ALPHA, ALPHA) "
        "(model.mixup); 0 = off",
    )
    p.add_argument(
        "--aux-age",
        type=float,
        default=DEFAULTS["aux_age"],
        help="gender only: weight of an auxiliary age head on the trunk (model.with_aux_age), trained beside the "
        "gender output and dropped before evaluation and export; 0 = off",
    )
    p.add_argument(
        "--augment",
        choices=models.AUGMENTATIONS,
        default=DEFAULTS["augment"],
        help="training augmentation (model.augmentation): standard, or occlude, which adds random erasing and a "
        "slight blur",
    )
    p.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default=DEFAULTS["schedule"],
        help="learning rate after the warm-up epoch: cosine decay to 1%%, or held at --lr (the phase whose "
        "epochs training.swa averages; use with --keep-epochs)",
    )
    p.add_argument(
        "--keep-epochs",
        action="store_true",
        help="also save every epoch's weights as epoch<N>.keras (snapshots for training.swa)",
    )
    p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="TensorFlow threads, 0 = all")
    p.add_argument("--limit", type=int, default=DEFAULTS["limit"], help="use at most N training images (smoke runs)")
    p.add_argument("--widths", default=DEFAULTS["widths"], help="channels per conv block")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side in pixels (default: the served size, common/spec.py IMAGE_SIZES); others only to compare "
        "input sizes",
    )
    p.add_argument(
        "--finish-only",
        action="store_true",
        help="skip training: rerun the post-training steps on the run's saved best model",
    )
    args = p.parse_args(argv)
    args.out = args.out or Path("runs") / args.task
    args.image_size = args.image_size or spec.image_size(args.task)
    return args


def make_loss(args: argparse.Namespace):
    if args.task == "gender":
        return keras.losses.BinaryCrossentropy()
    return heads.age_loss(args.age_loss, huber_delta=args.huber_delta)


def metric_list(task: str) -> list:
    if task == "age":
        return [heads.age_mae]
    return [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")]


def compile_args_for(args: argparse.Namespace, *, aux: bool) -> dict:
    """Loss and metrics of the network: ``aux``, as trained with ``--aux-age``: the gender output and the auxiliary
    age head (LDL + L1 on its distribution, as the age CNN trains), weighted ``1 : aux_age``; else the one output."""
    if not aux:
        return {"loss": make_loss(args), "metrics": metric_list(args.task)}
    gender, head = spec.GENDER_OUTPUT, models.AUX_AGE
    return {
        "loss": {gender: make_loss(args), head: heads.age_loss("ldl+l1")},
        "loss_weights": {gender: 1.0, head: args.aux_age},
        "metrics": {gender: metric_list(args.task)},
    }


def age_head(args: argparse.Namespace) -> str:
    return "regression" if args.age_loss == "huber" else "bins"


def member_folder(source: Path) -> Path:
    """Where a member's records live: a run's folder (its ``.keras`` file's parent), or the version folder itself."""
    return source.parent if source.suffix == ".keras" else source


def member_config(source: Path) -> dict:
    """The training record of a member: a run's ``config.json`` beside its ``.keras`` file, or a version's."""
    record = member_folder(source) / ("config.json" if source.suffix == ".keras" else "training_config.json")
    if not record.exists():
        raise FileNotFoundError(f"{source}: no training record at {record}")
    return json.loads(record.read_text())


def check_same_split(source: Path, seed: int) -> None:
    """Refuses weights trained on another split: their training faces would be in this run's validation and test."""
    trained_on = member_config(source).get("seed", DEFAULTS["seed"])
    if trained_on != seed:
        raise SystemExit(f"--init-from {source} was trained on the split of seed {trained_on}, this run's is {seed}")


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
        folder = source / "model.savedmodel" if (source / "model.savedmodel").is_dir() else source
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


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.resume or args.finish_only:  # the run's own split and orders, whatever the command line says
        recorded = json.loads((args.out / "config.json").read_text())
        args.seed = recorded.get("seed", args.seed)
        args.order_seed = recorded.get("order_seed", args.order_seed)
    elif args.init_from:
        check_same_split(args.init_from, args.seed)
    # The split must never move (evaluation and calibration read it from the recorded seed); everything random in
    # training itself follows the order seed, so a second ensemble member sees other orders on the same faces.
    if args.order_seed is None:
        args.order_seed = args.seed
    keras.utils.set_random_seed(args.order_seed)

    data = utk.load(args.data, cache_dir=args.cache_dir, size=args.image_size)
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
    logging.info("train %d, val %d images of %dx%d", len(train), len(val), args.image_size, args.image_size)

    augment = models.augmentation(seed=args.order_seed, strength=args.augment)

    # Loss weights for the rare ages (and, for gender, the children), in training only: validation loss stays the
    # plain mean, so checkpoints and early stopping compare weighted and unweighted runs on the same scale.
    weighted = bool(args.tail_weight) or args.child_weight != 1.0
    if args.child_weight != 1.0 and args.task != "gender":
        raise SystemExit("--child-weight is for --task gender")
    if weighted and args.mixup:
        raise SystemExit("--tail-weight and --child-weight cannot go with --mixup (a blend of two faces has no age)")
    if args.mixup and args.task != "gender":
        raise SystemExit("--mixup is for --task gender (a blend of two age distributions is not one face's)")
    if args.aux_age and (args.task != "gender" or args.mixup):
        raise SystemExit("--aux-age is for --task gender, without --mixup (a blend of two faces has no one age)")

    def dataset(part: utk.Dataset, training: bool, aux: bool = bool(args.aux_age)) -> tf.data.Dataset:
        """Faces and labels; ``aux``: with the auxiliary head's ages (False for the network as kept)."""
        columns = (part.images, getattr(part, y).astype("float32")[:, None])
        if training and weighted:
            factors = [utk.tail_weights(part.ages, args.tail_weight)] if args.tail_weight else []
            if args.child_weight != 1.0:
                factors.append(utk.child_weights(part.ages, args.child_weight))
            weights = np.prod(factors, axis=0)  # each factor has mean 1; their product is brought back to it
            columns += (weights if len(factors) == 1 else (weights / weights.mean()).astype("float32"),)
        if aux:
            columns += (part.ages.astype("float32")[:, None],)
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if training:
            ds = ds.shuffle(len(part), seed=args.order_seed, reshuffle_each_iteration=True)
        ds = ds.batch(args.batch_size)
        if training:
            ds = ds.map(
                lambda x, *rest: (
                    tf.cast(tf.clip_by_value(augment(tf.cast(x, "float32"), training=True), 0, 255), "uint8"),
                    *rest,
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
            if args.mixup:
                ds = ds.map(lambda x, y: models.mixup(x, y, args.mixup), num_parallel_calls=tf.data.AUTOTUNE)
        if aux:
            # The age is the last column; a loss weight, when there is one, stays the third element.
            ds = ds.map(
                lambda x, gender, *rest: (x, {spec.GENDER_OUTPUT: gender, models.AUX_AGE: rest[-1]}, *rest[:-1])
            )
        return ds.prefetch(tf.data.AUTOTUNE)

    widths = models.parse_widths(args.widths)
    model = models.build(args.task, size=args.image_size, widths=widths, age_head=age_head(args))
    if args.aux_age:
        model = models.with_aux_age(model)
    compile_args = compile_args_for(args, aux=bool(args.aux_age))
    # What is evaluated, kept and exported: the network without an auxiliary head (the same loss without one).
    served_compile_args = compile_args_for(args, aux=False)
    # Checkpoints follow the served output's loss, not a sum that includes the auxiliary head's.
    monitor = f"val_{spec.GENDER_OUTPUT}_loss" if args.aux_age else "val_loss"
    model.compile(optimizer=keras.optimizers.AdamW(args.lr, weight_decay=args.weight_decay), **compile_args)

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(
        image_size=args.image_size,
        channel_order=spec.CHANNEL_ORDER,
        resize=str(spec.RESIZE_METHOD),
        age_head=age_head(args) if args.task == "age" else None,
        data_summary=data.summary.line(args.data),
        n_train=len(train),
        n_val=len(val),
        tensorflow=tf.__version__,
        keras=keras.__version__,
        argv=sys.argv[1:],
    )

    best, last, state_file = args.out / "model.keras", args.out / "last.keras", args.out / "state.json"
    if args.finish_only:
        # Keep the config of the run that trained the model; only the post-training record changes.
        config = {**json.loads((args.out / "config.json").read_text()), "finish_only_argv": sys.argv[1:]}
    else:
        initial_epoch, best_loss = 0, None
        if args.resume:
            state = json.loads(state_file.read_text())
            config = {**json.loads((args.out / "config.json").read_text()), "resumed_argv": sys.argv[1:]}
            model = keras.models.load_model(last)  # weights and optimizer state
            model.compile(optimizer=model.optimizer, **compile_args)
            initial_epoch, best_loss = state["epoch"] + 1, state["best_val_loss"]
            logging.info("resuming %s at epoch %d (best val_loss %.4f)", args.out, initial_epoch + 1, best_loss)
        elif args.init_from:
            config["init_copied"] = len(init_weights(model, args.init_from))
            logging.info("initialised %d weights from %s", config["init_copied"], args.init_from)
        (args.out / "config.json").write_text(json.dumps(config, indent=2))
        ema = WeightAverage(args.ema, args.out / "ema.npz", resume=args.resume) if args.ema else None
        callbacks = [
            BudgetAndCosine(args.lr, args.epochs, args.budget_minutes, constant=args.schedule == "constant"),
            *([ema] if ema else []),  # swaps the averaged weights in before validation...
            keras.callbacks.ModelCheckpoint(
                best, monitor=monitor, mode="min", save_best_only=True, initial_value_threshold=best_loss
            ),
            *([ema.restore_callback()] if ema else []),  # ...and the live ones back after the best is saved
            keras.callbacks.ModelCheckpoint(last),
            *([keras.callbacks.ModelCheckpoint(args.out / "epoch{epoch:03d}.keras")] if args.keep_epochs else []),
            ResumeState(state_file, best_loss, monitor),
            keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=args.patience),
            keras.callbacks.CSVLogger(args.out / "history.csv", append=args.resume),
        ]
        start = time.time()
        model.fit(
            dataset(train, True),
            validation_data=dataset(val, False),
            epochs=args.epochs,
            initial_epoch=initial_epoch,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        config["train_seconds"] = round(config.get("train_seconds", 0) * args.resume + time.time() - start, 1)

    # Post-training steps, chosen on the validation split. While training, BatchNorm statistics describe augmented
    # faces, which makes the per-epoch validation loss noisy (it jumps 10-15% between neighbouring epochs), so the
    # checkpoint it picked is not always the best model. Both candidates, that checkpoint and the last epoch's
    # weights, get clean statistics (kept only where they help) and the lower validation loss is kept.
    def finished(path: Path) -> tuple[keras.Model, dict]:
        candidate = models.without_aux(keras.models.load_model(path))
        candidate.compile(**served_compile_args)  # a reloaded Huber loss forgets its delta
        before = candidate.evaluate(dataset(val, False, aux=False), verbose=0, return_dict=True)
        models.recalibrate_batchnorm(candidate, train.images, seed=args.order_seed)
        after = candidate.evaluate(dataset(val, False, aux=False), verbose=0, return_dict=True)
        kept = after["loss"] < before["loss"]
        if not kept:
            candidate = models.without_aux(keras.models.load_model(path))
        logging.info(
            "%s, BatchNorm recalibration: val %s -> %s (%s)", path.name, before, after, "kept" if kept else "dropped"
        )
        return candidate, {"bn_kept": kept, "val_before": before, "val_after": after}

    candidates = {name: finished(path) for name, path in (("best", best), ("last", last)) if path.exists()}
    val_loss = {name: r["val_after" if r["bn_kept"] else "val_before"]["loss"] for name, (_, r) in candidates.items()}
    chosen = min(val_loss, key=val_loss.get)
    model = candidates[chosen][0]
    model.save(best)
    config["post_training"] = {"chosen": chosen, **{name: r for name, (_, r) in candidates.items()}}
    config["tta"] = args.tta
    config.update(served_record(heads.raw_views(model, val.images, tta=args.tta), args.task, val, args.estimate))
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    logging.info("temperature %.3f; validation as served: %s", config["temperature"], config["val_served"])
    logging.info("best model (lowest val_loss) in %s", best)
    return best


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


class WeightAverage(keras.callbacks.Callback):
    """Exponential moving average of the trainable weights: validated, checkpointed and kept as the model.

    Averaging the last few hundred steps' weights smooths the noise of the final updates (Polyak averaging).
    The average replaces the live weights from validation until the best checkpoint is written; the
    companion :meth:`restore_callback`, placed after that checkpoint, puts the live weights back for training.
    The average is saved beside the run after every epoch so ``--resume`` continues it.
    """

    def __init__(self, decay: float, path: Path, *, resume: bool = False):
        super().__init__()
        self.decay, self.path, self.resume = decay, path, resume
        self.shadow: list[tf.Variable] = []
        self.live: list[np.ndarray] | None = None
        self.updates = 0

    def on_train_begin(self, logs=None):
        weights = self.model.trainable_weights
        self.shadow = [tf.Variable(w.value, trainable=False) for w in weights]
        if self.resume and self.path.exists():
            with np.load(self.path) as z:
                for i, var in enumerate(self.shadow):
                    var.assign(z[f"w{i}"])
                self.updates = int(z["updates"])
        self._update = tf.function(self._update_fn)

    def _update_fn(self, decay):
        for avg, w in zip(self.shadow, self.model.trainable_weights, strict=True):
            avg.assign(decay * avg + (1 - decay) * w)

    def on_train_batch_end(self, batch, logs=None):
        self.updates += 1
        # The usual warm-up of the decay: early on the average would remember the starting weights too long.
        self._update(tf.constant(min(self.decay, (1 + self.updates) / (10 + self.updates)), "float32"))

    def on_test_begin(self, logs=None):
        if self.live is not None:
            return
        self.live = [w.numpy() for w in self.model.trainable_weights]
        for w, avg in zip(self.model.trainable_weights, self.shadow, strict=True):
            w.assign(avg)

    def swap_back(self):
        if self.live is None:
            return
        for w, value in zip(self.model.trainable_weights, self.live, strict=True):
            w.assign(value)
        self.live = None
        np.savez(self.path, updates=self.updates, **{f"w{i}": v.numpy() for i, v in enumerate(self.shadow)})

    def restore_callback(self) -> keras.callbacks.Callback:
        outer = self

        class Restore(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                outer.swap_back()

        return Restore()

    def on_train_end(self, logs=None):
        self.swap_back()


class ResumeState(keras.callbacks.Callback):
    """Records the finished epoch and the best validation loss so far, for ``--resume``."""

    def __init__(self, path: Path, best: float | None = None, monitor: str = "val_loss"):
        super().__init__()
        self.path, self.best, self.monitor = path, best, monitor

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get(self.monitor)
        if loss is not None and (self.best is None or loss < self.best):
            self.best = float(loss)
        self.path.write_text(json.dumps({"epoch": epoch, "best_val_loss": self.best}))


class BudgetAndCosine(keras.callbacks.Callback):
    """Cosine learning-rate decay over whichever runs out first, epochs or the time budget.

    Stops before an epoch that would overrun the budget, so a budgeted run still
    ends on an annealed learning rate and a full validation pass. ``constant`` holds the rate at ``lr`` after the
    warm-up instead: the phase of stochastic weight averaging, whose epochs are averaged rather than annealed.
    """

    def __init__(
        self, lr: float, epochs: int, budget_minutes: float | None, warmup: int = 1, *, constant: bool = False
    ):
        super().__init__()
        self.lr, self.epochs, self.warmup, self.constant = lr, epochs, warmup, constant
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
            else 1.0
            if self.constant
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
