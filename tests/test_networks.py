"""Classifier networks: shapes, heads, regularization, backbones from a weights file."""

import keras
import numpy as np
import pytest

from models import networks


def test_cnn_is_stacked_conv_blocks_with_a_dense_head():
    model = networks.build_network("cnn", (64, 64, 1), 2)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [c.filters for c in convs] == list(networks.CNN_FILTERS) and len(pools) == len(convs)
    assert all(isinstance(c.kernel_regularizer, keras.regularizers.L2) for c in convs)
    assert model.get_layer("head_dropout").rate == 0.25
    assert isinstance(model.get_layer("head_dense").kernel_regularizer, keras.regularizers.L2)
    assert convs[0].strides == (1, 1)  # small images keep their resolution
    assert networks.build_network("cnn", (224, 224, 1), 2).layers[1].strides == (2, 2)
    assert networks.gradcam_layer(model) == "block4_pool"


@pytest.mark.parametrize(("classes", "channels"), [(2, 1), (4, 3)])
def test_outputs_are_probabilities_per_class(classes, channels):
    model = networks.build_network("cnn", (32, 32, channels), classes)
    x = np.random.default_rng(0).normal(size=(5, 32, 32, channels)).astype("float32")
    p = model(x, training=False).numpy()
    assert p.shape == (5, classes)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert (p > 0).all()


def test_mixed_precision_keeps_the_output_in_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = networks.build_network("cnn", (32, 32, 1), 2)
        assert model.get_layer("block1_conv").compute_dtype == "float16"
        out = model(np.zeros((1, 32, 32, 1), "float32"), training=False)
        assert out.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_backbones_build_without_downloads_and_are_inlined():
    model = networks.build_network("resnet50", (32, 32, 1), 3)
    assert model.output.shape[-1] == 3
    # The backbone's layers sit in the model itself, so Grad-CAM can reach them.
    assert networks.gradcam_layer(model) == "conv5_block3_out"
    assert model.get_layer("conv1_conv").kernel.shape[2] == 1


@pytest.mark.slow
def test_backbone_weights_from_a_file_grey_input(tmp_path):
    """An RGB weights file for a grey model: the first kernel summed over colour."""
    source = keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = str(tmp_path / "densenet121_notop.weights.h5")
    source.save_weights(path)
    model = networks.build_network("densenet121", (32, 32, 1), 2, weights=path)
    first = source.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_allclose(
        model.get_layer("conv1_conv").get_weights()[0], first.sum(axis=2, keepdims=True)
    )
    for name in ("conv5_block16_2_conv", "bn"):
        for got, want in zip(
            model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    # Equivalence: the grey model on an image = the RGB backbone on it repeated 3 times.
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype("float32")
    features = keras.Model(model.inputs[0], model.get_layer("avg_pool").output)
    np.testing.assert_allclose(
        features(x, training=False), source(np.repeat(x, 3, axis=-1), training=False), atol=1e-4
    )


@pytest.mark.parametrize(
    ("name", "shape", "classes", "weights", "message"),
    [
        ("vgg", (64, 64, 1), 2, None, "unknown network"),
        ("cnn", (64, 64, 1), 1, None, "at least 2 classes"),
        ("resnet50", (16, 16, 1), 2, None, "at least 32 pixels"),
        ("cnn", (64, 64, 1), 2, "w.h5", "no published weights"),
    ],
)
def test_bad_requests_are_refused(name, shape, classes, weights, message):
    with pytest.raises(ValueError, match=message):
        networks.build_network(name, shape, classes, weights=weights)
