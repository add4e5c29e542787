"""The Keras callbacks ``training.train`` fits with: the learning-rate schedule within a time budget
(:class:`BudgetAndCosine`), the moving average of the weights that is validated and kept (:class:`WeightAverage`),
and the record ``--resume`` continues from (:class:`ResumeState`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf


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
    """Records the finished epoch, the best validation loss so far and the training time spent (``elapsed``, a
    function giving seconds: :meth:`BudgetAndCosine.elapsed`), for ``--resume``."""

    def __init__(self, path: Path, best: float | None = None, monitor: str = "val_loss", elapsed=None):
        super().__init__()
        self.path, self.best, self.monitor, self.elapsed = path, best, monitor, elapsed

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get(self.monitor)
        if loss is not None and (self.best is None or loss < self.best):
            self.best = float(loss)
        state = {"epoch": epoch, "best_val_loss": self.best}
        if self.elapsed is not None:
            state["elapsed_seconds"] = round(self.elapsed(), 1)
        self.path.write_text(json.dumps(state))


class BudgetAndCosine(keras.callbacks.Callback):
    """Cosine learning-rate decay over whichever runs out first, epochs or the time budget.

    Stops before an epoch that would overrun the budget, so a budgeted run still
    ends on an annealed learning rate and a full validation pass. ``constant`` holds the rate at ``lr`` after the
    warm-up instead: the phase of stochastic weight averaging, whose epochs are averaged rather than annealed.

    ``elapsed``: seconds an interrupted run already trained (``--resume`` reads them from the run's state), so the
    budget and the time-based schedule go on where they stopped instead of starting over.
    """

    def __init__(
        self,
        lr: float,
        epochs: int,
        budget_minutes: float | None,
        warmup: int = 1,
        *,
        constant: bool = False,
        elapsed: float = 0.0,
    ):
        super().__init__()
        if budget_minutes is not None and not budget_minutes > 0:
            # 0 used to read as "no budget" (falsy): refuse it rather than guess.
            raise ValueError(f"budget_minutes must be positive or None, got {budget_minutes}")
        self.lr, self.epochs, self.warmup, self.constant, self.before = lr, epochs, warmup, constant, elapsed
        self.budget = budget_minutes * 60 if budget_minutes else math.inf
        self.start = self.epoch_start = time.time() - elapsed
        self.longest_epoch = 0.0

    def elapsed(self) -> float:
        """Seconds of training so far, including those before a resume."""
        return time.time() - self.start

    def _progress(self, epoch: int) -> float:
        return min(1.0, max(epoch / self.epochs, (time.time() - self.start) / self.budget))

    def on_train_begin(self, logs=None):
        self.start = time.time() - self.before

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
