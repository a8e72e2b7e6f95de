"""Classifier networks: the articles' small CNN and standard Keras backbones.

Every network takes the tf.Transform output reshaped to an image (float32, height x width x
channels, standardized) and returns softmax probabilities, one column per label in the
vocabulary's order (a binary task has two columns). The output layer computes in float32,
so the networks are safe under a mixed-precision policy.
"""

from __future__ import annotations

import keras

from models.features import CNN, DENSENET121, NETWORKS, RESNET50

# Smallest input side each keras.applications backbone accepts without the top.
_MIN_SIDE = {RESNET50: 32, DENSENET121: 32}
CNN_FILTERS = (16, 32, 64, 128)
CNN_STRIDED_FROM = 128  # from this input side up, the first convolution has stride 2


def build_network(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dropout: float = 0.25,
    weight_decay: float = 1e-4,
    weights: str | None = None,
) -> keras.Model:
    """The named classifier, uncompiled.

    Args:
        name: one of ``NETWORKS``.
        input_shape: (height, width, channels) of the normalized image.
        num_classes: columns of the softmax output (2 for a binary task).
        dropout: dropout rate before the output layer.
        weight_decay: L2 factor on every convolution and dense kernel.
        weights: a Keras weights file for a backbone (``include_top=False``, as
            ``keras.applications`` publishes them); None starts from random weights.
            Nothing is ever downloaded. The file is for RGB inputs, as published; for
            1-channel images its first kernel is summed over the colour channels.

    Raises:
        ValueError: an unknown name, too few classes, an input too small for the backbone,
            or a weights file for the CNN.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    inputs = keras.Input(shape=input_shape, name="image_normalized")
    if name == CNN:
        if weights:
            raise ValueError("the cnn network has no published weights; --weights is for backbones")
        features = _cnn_features(inputs, weight_decay)
    else:
        features = _backbone_features(name, inputs, weights)
    x = keras.layers.Dense(
        128,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(weight_decay),
        name="head_dense",
    )(features)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_regularizer=keras.regularizers.L2(weight_decay),
        dtype="float32",
        name="probabilities",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _cnn_features(inputs, weight_decay: float):
    """Stacked Conv2D + pooling blocks (the source articles' classifier), batch-normalized.

    Global max pooling at the end: a lesion anywhere in the image should light the feature
    up, wherever it sits. Large inputs (224 px by default) start with a stride-2
    convolution, which cuts the cost about fourfold (about 50 million multiply-adds per
    224 x 224 image) while lesions stay several pixels wide.
    """
    x = inputs
    stride = 2 if min(inputs.shape[1:3]) >= CNN_STRIDED_FROM else 1
    for i, filters in enumerate(CNN_FILTERS, start=1):
        x = keras.layers.Conv2D(
            filters,
            3,
            strides=stride if i == 1 else 1,
            padding="same",
            use_bias=False,
            kernel_regularizer=keras.regularizers.L2(weight_decay),
            name=f"block{i}_conv",
        )(x)
        # Momentum 0.9, not Keras' 0.99: small datasets take few steps, and the moving
        # statistics used at inference must have caught up by the end of training.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.layers.GlobalMaxPooling2D(name="pool")(x)


def _backbone_features(name: str, inputs, weights: str | None):
    """The backbone's layers inlined into the model (Grad-CAM can reach every one)."""
    height, width = inputs.shape[1:3]
    if min(height, width) < _MIN_SIDE[name]:
        raise ValueError(f"{name} needs images of at least {_MIN_SIDE[name]} pixels a side")
    factory = {RESNET50: keras.applications.ResNet50, DENSENET121: keras.applications.DenseNet121}
    backbone = factory[name](include_top=False, weights=None, input_tensor=inputs, pooling="avg")
    if weights:
        # Never "imagenet" (a download): a local file, for RGB inputs as published.
        source = factory[name](
            include_top=False, weights=weights, input_shape=(height, width, 3), pooling="avg"
        )
        for target, layer in zip(backbone.layers, source.layers, strict=True):
            values = layer.get_weights()
            if values and values[0].shape != target.get_weights()[0].shape:
                # Grey input: the RGB kernel summed over colour is exactly that network
                # applied to the grey image repeated on three channels.
                values[0] = values[0].sum(axis=2, keepdims=True)
            target.set_weights(values)
    return backbone.output


def gradcam_layer(model: keras.Model) -> str:
    """The name of the last layer with a spatial (4-D) output: the one Grad-CAM looks at."""
    for layer in reversed(model.layers):
        if len(layer.output.shape) == 4:
            return layer.name
    raise ValueError(f"{model.name} has no layer with a spatial output")
