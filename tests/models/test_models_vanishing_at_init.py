"""The textbook vanishing-gradient effect, at initialization, on real MNIST."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vgbench.models import build_model, hidden_layers

pytestmark = pytest.mark.mnist

DEPTH = 20
WIDTH = 64


def kernel_gradient_norms(mnist_batch, activation, initializer):
    x, y = mnist_batch
    model = build_model("mlp", depth=DEPTH, width=WIDTH, activation=activation, initializer=initializer, seed=0)
    kernels = [block.weight_layer.kernel for block in hidden_layers(model)]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=False))
    return np.array([float(tf.norm(g)) for g in tape.gradient(loss, kernels)])


def test_mnist_batch_is_a_fixed_real_batch(mnist_batch):
    x, y = mnist_batch
    assert x.shape == (256, 784) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    # The first MNIST training labels are 5, 0, 4, 1, 9.
    assert y[:5].tolist() == [5, 0, 4, 1, 9]


def test_sigmoid_with_glorot_vanishes(mnist_batch):
    norms = kernel_gradient_norms(mnist_batch, "sigmoid", "glorot_uniform")
    assert np.isfinite(norms).all() and (norms > 0).all()
    # Each layer multiplies the gradient by at most sigmoid's 0.25 times the
    # weights' gain: over 19 layers the first one sees about 1e-12 of the last.
    assert norms[0] / norms[-1] < 1e-3
    # The decay is steady, not a single bad layer.
    assert norms[0] < norms[DEPTH // 2] < norms[-1]
    assert norms[DEPTH // 2] / norms[-1] < 1e-2


def test_relu_with_he_does_not_vanish(mnist_batch):
    norms = kernel_gradient_norms(mnist_batch, "relu", "he_normal")
    assert np.isfinite(norms).all() and (norms > 0).all()
    # He initialization keeps the backward signal's scale: the ratio is about 4
    # (the first layer reads 784 pixels, the others 64 units).
    assert 0.1 < norms[0] / norms[-1] < 10
