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
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import spec  # noqa: E402
from training import cli, heads  # noqa: E402
from training import data as utk  # noqa: E402
from training import model as models  # noqa: E402
from training.callbacks import BudgetAndCosine, ResumeState, WeightAverage  # noqa: E402
from training.export import HISTORY  # noqa: E402
from training.runs import SPLIT_SEED, init_weights, member_config, served_record  # noqa: E402

DEFAULTS = {
    "epochs": 80,
    "budget_minutes": None,
    "seed": SPLIT_SEED,
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
#: The fewest training and validation faces a run starts with: Keras cannot validate on none, and a temperature
#: fitted on fewer is noise (smoke runs on tests/utk_fixture.py have about six).
MIN_SPLIT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=("age", "gender"))
    p.add_argument("--data", required=True, type=cli.data_source, help="UTKFace.tar.gz or a folder of UTKFace images")
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<task>)")
    p.add_argument("--cache-dir", type=Path, default=utk.default_cache_dir(), help="decode cache ($AGEGENDER_CACHE)")
    p.add_argument("--epochs", type=cli.positive_int, default=DEFAULTS["epochs"])
    p.add_argument(
        "--budget-minutes",
        type=cli.positive_float,
        default=DEFAULTS["budget_minutes"],
        help="stop after the last epoch that fits in this wall-clock budget (positive; leave it out for none). "
        "--resume goes on with the time the run already spent",
    )
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="the train/val/test split's seed (keep it)")
    p.add_argument(
        "--order-seed",
        type=int,
        default=None,
        help="seed of initialisation, shuffling and augmentation (default: --seed); another value trains a "
        "different member for an ensemble on the same split",
    )
    p.add_argument("--batch-size", type=cli.positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"])
    p.add_argument(
        "--patience", type=cli.non_negative_int, default=DEFAULTS["patience"], help="epochs without val_loss gain"
    )
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
        help="continue an interrupted run in --out from its last epoch (weights, optimizer, EMA, schedule, the "
        "time spent of --budget-minutes)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train again into an --out that holds a run (by default refused: its model would be replaced)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="TensorFlow's deterministic kernels (tf.config.experimental.enable_op_determinism): the same seeds and "
        "data give the same model on this machine, some steps slower. Without it, multi-threaded kernels sum in "
        "varying order and two runs with the same seed differ slightly",
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
    p.add_argument(
        "--threads", type=cli.non_negative_int, default=DEFAULTS["threads"], help="TensorFlow threads, 0 = all"
    )
    p.add_argument(
        "--limit",
        type=cli.non_negative_int,
        default=DEFAULTS["limit"],
        help="use at most N training images (smoke runs); 0 = all",
    )
    p.add_argument("--widths", type=cli.widths, default=DEFAULTS["widths"], help="channels per conv block")
    p.add_argument(
        "--run-eagerly",
        action="store_true",
        help="no graph tracing of the training and evaluation steps: for smoke runs on a few dozen images, where "
        "tracing (5-8 s a run) costs more than the steps; much slower per image on real data",
    )
    p.add_argument(
        "--image-size",
        type=cli.positive_int,
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
    if args.resume and args.finish_only:
        p.error("--resume and --finish-only are two ways to use one run: give one")
    if args.overwrite and (args.resume or args.finish_only):
        p.error("--overwrite trains a new run; --resume and --finish-only continue the one in --out")
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
        return {"loss": make_loss(args), "metrics": metric_list(args.task), "run_eagerly": args.run_eagerly}
    gender, head = spec.GENDER_OUTPUT, models.AUX_AGE
    return {
        "loss": {gender: make_loss(args), head: heads.age_loss("ldl+l1")},
        "loss_weights": {gender: 1.0, head: args.aux_age},
        "metrics": {gender: metric_list(args.task)},
        "run_eagerly": args.run_eagerly,
    }


def age_head(args: argparse.Namespace) -> str:
    return "regression" if args.age_loss == "huber" else "bins"


def check_same_split(source: Path, seed: int) -> None:
    """Refuses weights trained on another split: their training faces would be in this run's validation and test."""
    if not source.exists():
        raise SystemExit(f"--init-from {source}: no such file or folder (a run's .keras file or a version folder)")
    try:
        trained_on = member_config(source).get("seed", DEFAULTS["seed"])
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"--init-from {err}") from None
    if trained_on != seed:
        raise SystemExit(f"--init-from {source} was trained on the split of seed {trained_on}, this run's is {seed}")


#: What a run folder holds that a new run replaces; their presence means --out holds a run.
RUN_FILES = ("config.json", "model.keras", "last.keras", "state.json", HISTORY)
#: Left by an earlier run and not written again by every new one: removed by --overwrite so they cannot mix in.
STALE_FILES = ("state.json", "ema.npz", "epoch*.keras")


def check_run_folder(args: argparse.Namespace) -> None:
    """What --out must hold for the mode asked: nothing of a run to start one (unless --overwrite), an interrupted
    run's state to --resume, a trained model to --finish-only. Checked before anything is read or written."""
    out = args.out
    if args.resume:
        missing = [n for n in ("config.json", "state.json", "last.keras") if not (out / n).is_file()]
        if missing:
            raise SystemExit(f"--resume: {out} holds no interrupted run (no {', '.join(missing)}); train without it")
    elif args.finish_only:
        if not (out / "config.json").is_file() or not any((out / n).is_file() for n in ("model.keras", "last.keras")):
            raise SystemExit(f"--finish-only: {out} holds no trained run (config.json and model.keras); train first")
    elif any((out / n).exists() for n in RUN_FILES):
        if not args.overwrite:
            raise SystemExit(
                f"{out} already holds a run: --resume continues it, --overwrite trains a new one in its place, "
                "--out NEW_FOLDER keeps it"
            )
        for pattern in STALE_FILES:
            for stale in out.glob(pattern):
                stale.unlink()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_run_folder(args)
    if args.child_weight != 1.0 and args.task != "gender":
        raise SystemExit("--child-weight is for --task gender")
    if (bool(args.tail_weight) or args.child_weight != 1.0) and args.mixup:
        raise SystemExit("--tail-weight and --child-weight cannot go with --mixup (a blend of two faces has no age)")
    if args.mixup and args.task != "gender":
        raise SystemExit("--mixup is for --task gender (a blend of two age distributions is not one face's)")
    if args.aux_age and (args.task != "gender" or args.mixup):
        raise SystemExit("--aux-age is for --task gender, without --mixup (a blend of two faces has no one age)")
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
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

    data = cli.load(args.data, cache_dir=args.cache_dir, size=args.image_size)
    splits = utk.split(data, seed=args.seed)
    train, val = data.subset(np.flatnonzero(splits == "train")), data.subset(np.flatnonzero(splits == "val"))
    if len(train) < MIN_SPLIT or len(val) < MIN_SPLIT:
        raise SystemExit(
            f"{args.data}: {len(train)} training and {len(val)} validation faces of {len(data)}; training needs at "
            f"least {MIN_SPLIT} of each (10% of the faces validate): give more images"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    utk.write_manifest(data, splits, args.out / "manifest.csv")
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
    # (Their combinations were checked in main's first lines, before anything was read or written.)
    weighted = bool(args.tail_weight) or args.child_weight != 1.0

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
        initial_epoch, best_loss, spent = 0, None, 0.0
        if args.resume:
            state = json.loads(state_file.read_text())
            spent = float(state.get("elapsed_seconds", 0.0))  # runs from before it was recorded: 0, as they were
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
        budget = BudgetAndCosine(
            args.lr, args.epochs, args.budget_minutes, constant=args.schedule == "constant", elapsed=spent
        )
        callbacks = [
            budget,
            *([ema] if ema else []),  # swaps the averaged weights in before validation...
            keras.callbacks.ModelCheckpoint(
                best, monitor=monitor, mode="min", save_best_only=True, initial_value_threshold=best_loss
            ),
            *([ema.restore_callback()] if ema else []),  # ...and the live ones back after the best is saved
            keras.callbacks.ModelCheckpoint(last),
            *([keras.callbacks.ModelCheckpoint(args.out / "epoch{epoch:03d}.keras")] if args.keep_epochs else []),
            ResumeState(state_file, best_loss, monitor, elapsed=budget.elapsed),
            keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=args.patience),
            keras.callbacks.CSVLogger(args.out / HISTORY, append=args.resume),
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
    def finished(path: Path, candidate: keras.Model) -> tuple[keras.Model, dict]:
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

    loaded = {
        name: (path, models.without_aux(keras.models.load_model(path)))
        for name, path in (("best", best), ("last", last))
        if path.exists()
    }
    # The best epoch was the last one: the same candidate twice. Its recalibration is seeded, so finishing it again
    # would only repeat the work (seconds of CPU a run; every one-epoch run in the tests). Compared before finishing,
    # which changes the BatchNorm statistics in place.
    same = len(loaded) == 2 and _same_weights(loaded["best"][1], loaded["last"][1])
    candidates = {
        name: finished(path, candidate) for name, (path, candidate) in loaded.items() if not same or name == "best"
    }
    if same:
        candidates["last"] = candidates["best"]
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


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    """Whether two models hold the same weights, value for value."""
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(wa, wb, strict=True))


if __name__ == "__main__":
    main()
