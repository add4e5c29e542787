"""The two CNNs and the augmentation they train with.

Each takes ``(size, size, 3)`` uint8 RGB (``common.spec.image_size(task)``) and rescales inside, so
whatever serves them sends raw pixels.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from common import spec

TASKS = ("age", "gender")
OUTPUT_NAMES = {"age": spec.AGE_OUTPUT, "gender": spec.GENDER_OUTPUT}
#: Age heads: ``bins`` is a softmax over whole years 0..MAX_AGE (the served age is its median,
#: ``heads.AGE_ESTIMATE``, and the interval its percentiles); ``regression`` is the single linear output of the
#: first models (no interval).
AGE_HEADS = ("bins", "regression")
MAX_AGE = 116
AGE_BINS = MAX_AGE + 1
# Channels per block; each block is two 3x3 convolutions and a 2x2 pool.
DEFAULT_WIDTHS = (16, 32, 64, 128)


def parse_widths(value: str | None) -> tuple[int, ...]:
    """Channels per conv block from their written form (``--widths``, and every run's recorded config): "16,32,64,128";
    None (a record from before the option) is the default."""
    return tuple(int(w) for w in str(value).split(",")) if value else DEFAULT_WIDTHS


#: ``augmentation`` strengths (``--augment``): "standard" is what every served model trained with.
AUGMENTATIONS = ("standard", "occlude")


def augmentation(seed: int | None = None, strength: str = "standard") -> keras.Sequential:
    """Face-safe augmentation: mirror, small shifts and turns, brightness and contrast.

    No vertical flips: upside-down faces never reach the model, since the
    preprocessor aligns faces on the eyes. ``"occlude"`` adds, per face, a random rectangle of noise over up to a
    fifth of it (random erasing, applied to about a quarter of the faces) and a slight blur to about one in seven:
    a regulariser for networks that fit the training faces far better than new ones, and what real photos do to a
    face (hands, glasses, hair, soft focus). The geometry stays the standard one, because served crops are aligned
    as the training faces are.
    """
    if strength not in AUGMENTATIONS:
        raise ValueError(f"augmentation {strength!r}: expected one of {AUGMENTATIONS}")
    steps = [
        layers.RandomFlip("horizontal", seed=seed),
        layers.RandomTranslation(0.06, 0.06, fill_mode="reflect", seed=seed),
        layers.RandomRotation(0.03, fill_mode="reflect", seed=seed),  # about +-11 degrees
        layers.RandomZoom((-0.08, 0.08), fill_mode="reflect", seed=seed),
        layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
        layers.RandomContrast(0.15, seed=seed),
    ]
    if strength == "occlude":
        # A single float factor is the upper end of a probability drawn per face: 0.5 erases about a quarter.
        steps += [
            layers.RandomErasing(factor=0.5, scale=(0.02, 0.2), value_range=(0, 255), seed=seed),
            layers.RandomGaussianBlur(factor=0.3, kernel_size=3, sigma=(0.1, 1.0), value_range=(0, 255), seed=seed),
        ]
    return keras.Sequential(steps, name="augment")


def mixup(images, labels, alpha: float, seed: int | None = None):
    """Blends each face of a batch with another one of the same batch, and their labels alike (mixup).

    A regulariser for the gender net, which at 64 px stops gaining on validation while its training accuracy
    keeps climbing (it memorises). Each pair's weight is Beta(alpha, alpha); labels must be probabilities
    (gender), not age distributions. Images come back uint8, as the models take them.
    """
    n = tf.shape(images)[0]
    g1 = tf.random.gamma([n, 1], alpha, seed=seed)
    g2 = tf.random.gamma([n, 1], alpha, seed=None if seed is None else seed + 1)
    lam = g1 / (g1 + g2)
    other = tf.random.shuffle(tf.range(n), seed=seed)
    x = tf.cast(images, "float32")
    mixed = lam[:, :, None, None] * x + (1.0 - lam[:, :, None, None]) * tf.gather(x, other)
    y = lam * labels + (1.0 - lam) * tf.gather(labels, other)
    return tf.cast(tf.clip_by_value(tf.round(mixed), 0, 255), "uint8"), y


def build(
    task: str,
    *,
    size: int | None = None,
    widths: tuple[int, ...] = DEFAULT_WIDTHS,
    dropout: float = 0.3,
    age_head: str = "bins",
    name: str | None = None,
) -> keras.Model:
    """Builds the age model or the gender classifier.

    Args:
        task: ``"age"`` or ``"gender"`` (probability of female).
        size: Input side in pixels; default the served size of ``task`` (``common.spec.image_size``).
        widths: Channels of each conv block.
        dropout: Dropout before the head.
        age_head: ``"bins"`` (probabilities of each age 0..116, shape ``(N, AGE_BINS)``) or
            ``"regression"`` (years, shape ``(N, 1)``).
        name: The model's name, default ``task``. A given name also prefixes every weighted layer's name
            (``member0_conv0_0``), so that the members of an ensemble keep distinct weight paths through saving,
            export and ``training.calibrate``'s reading of a SavedModel's variables.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    size = size or spec.image_size(task)
    if age_head not in AGE_HEADS:
        raise ValueError(f"age_head must be one of {AGE_HEADS}, got {age_head!r}")
    p = f"{name}_" if name else ""
    inputs = keras.Input((size, size, 3), dtype="uint8", name=spec.INPUT_NAME)
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(layers.Identity()(inputs))
    for i, width in enumerate(widths):
        for j in range(2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{p}conv{i}_{j}")(x)
            x = layers.BatchNormalization(name=f"{p}bn{i}_{j}")(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x) if i < len(widths) - 1 else layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(128, activation="relu", name=f"{p}fc")(x)
    x = layers.Dropout(dropout / 2)(x)
    if task == "age" and age_head == "bins":
        # Logits, then a separate softmax: export divides the logits' log-probabilities by a temperature.
        x = layers.Dense(AGE_BINS, name=f"{p}age_logits")(x)
        out = layers.Softmax(name=f"{p}age_distribution")(x)
    elif task == "age":
        # Start the bias at UTKFace's mean age so early epochs are not spent getting there.
        out = layers.Dense(1, bias_initializer=keras.initializers.Constant(33.0), name=p + OUTPUT_NAMES[task])(x)
    else:
        out = layers.Dense(1, activation="sigmoid", name=p + OUTPUT_NAMES[task])(x)
    return keras.Model(inputs, out, name=name or task)


#: The auxiliary head of ``with_aux_age``: a distribution over ages 0..MAX_AGE, trained, never exported.
AUX_AGE = "aux_age_distribution"


def with_aux_age(model: keras.Model, dropout: float = 0.15) -> keras.Model:
    """The gender network with a second head on its hidden layer: the face's age, as a distribution over years.

    Multi-task supervision (``training.train --aux-age``): the age of every training face is known, and asking the
    shared features to carry it may help the gender head where gender and age interact (children, whose faces say
    less about gender). The head is dropped by :func:`without_aux` before anything is evaluated or exported, so the
    served gender CNN is the same network, of the same size, as without it. Against a control at equal epochs from
    scratch it gave +0.005 validation accuracy with one seed and -0.005 with another: no effect seen so far
    (docs/models-log.md, "Gender v5"), so it is off by default.
    """
    hidden = model.get_layer("fc").output
    aux = layers.Dense(AGE_BINS, name="aux_age_logits")(layers.Dropout(dropout)(hidden))
    aux = layers.Softmax(name=AUX_AGE)(aux)
    return keras.Model(model.inputs, {spec.GENDER_OUTPUT: model.outputs[0], AUX_AGE: aux}, name=model.name)


def without_aux(model: keras.Model) -> keras.Model:
    """The gender network alone, from a model :func:`with_aux_age` made (any other model comes back as it is)."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.get_layer(spec.GENDER_OUTPUT).output, name=model.name)


def recalibrate_batchnorm(
    model: keras.Model, images: np.ndarray, *, batch_size: int = 64, steps: int = 150, seed: int = 0
) -> None:
    """Re-estimates the BatchNorm moving statistics on clean, un-augmented faces.

    Training only ever shows the network augmented faces, so the moving means and
    variances describe those, not the clean crops served. A few forward passes in
    training mode (no weight updates) move them to clean statistics.
    """
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.9  # forget the augmented statistics within the pass
    forward = tf.function(lambda x: model(x, training=True))
    order = np.random.default_rng(seed).permutation(len(images))[: batch_size * steps]
    for i in range(0, len(order), batch_size):
        forward(images[np.sort(order[i : i + batch_size])])
    for layer, momentum in zip(bns, momenta, strict=True):
        layer.momentum = momentum
