"""The segmentation network: a U-Net (Ronneberger et al., 2015) sized by two numbers.

``depth`` is the number of down-sampling steps (the image side must divide by 2**depth),
``width`` the filters of the first level, doubled at each step down. Each level is two
3x3 convolutions with batch normalization; the decoder up-samples with transposed
convolutions and concatenates the encoder's features of the same level. The output is a
softmax over the classes for every pixel (class 0 is background), computed in float32 so
the network is safe under a mixed-precision policy.
"""

from __future__ import annotations

import keras

from models.features import UNET, UNET_DEPTH, UNET_WIDTH


def build_unet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    depth: int = UNET_DEPTH,
    width: int = UNET_WIDTH,
    dropout: float = 0.0,
    weight_decay: float = 1e-4,
) -> keras.Model:
    """The U-Net, uncompiled: (H, W, C) standardized image → (H, W, classes) probabilities.

    Args:
        input_shape: (height, width, channels); height and width divisible by 2**depth.
        num_classes: output channels, background included (2 for one foreground class).
        depth: down-sampling steps (1 to 6).
        width: filters of the first level (at least 4).
        dropout: spatial dropout at the bottom of the U.
        weight_decay: L2 factor on every convolution kernel.

    Raises:
        ValueError: (one line) a shape the depth cannot halve, or an out-of-range argument.
    """
    height, width_px = input_shape[:2]
    if not 1 <= depth <= 6 or width < 4:
        raise ValueError(f"a U-Net needs 1 <= depth <= 6 and width >= 4, got {depth}, {width}")
    if num_classes < 2:
        raise ValueError(
            f"segmentation needs at least 2 classes (background and one), got {num_classes}"
        )
    step = 2**depth
    if height % step or width_px % step:
        raise ValueError(
            f"a U-Net of depth {depth} needs image sides divisible by {step}; "
            f"the images are {height}x{width_px}"
        )
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(shape=input_shape, name="image_normalized")
    x, skips = inputs, []
    for level in range(depth):
        x = _block(x, width * 2**level, regularizer, f"down{level}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
    x = _block(x, width * 2**depth, regularizer, "bottom")
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name="bottom_dropout")(x)
    for level in reversed(range(depth)):
        filters = width * 2**level
        x = keras.layers.Conv2DTranspose(
            filters, 2, strides=2, kernel_regularizer=regularizer, name=f"up{level}_upsample"
        )(x)
        x = keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = _block(x, filters, regularizer, f"up{level}")
    outputs = keras.layers.Conv2D(
        num_classes, 1, activation="softmax", dtype="float32", name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=UNET)


def _block(x, filters: int, regularizer, name: str):
    for i in (1, 2):
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            kernel_regularizer=regularizer,
            name=f"{name}_conv{i}",
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = keras.layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x
