"""Keras models of every kind, not built by `models/`, every layer named.

Shared by the any-model tests (tests/bench/test_any_model.py) and the JAX
comparison (tests/bench/test_instrumentation_jax.py), whose JAX subprocess
imports this file too: the layer names, and so the variable paths, are the
same in both processes.
"""

from __future__ import annotations

import keras
import numpy as np

L = keras.layers


class MyMLP(keras.Model):
    """A subclassed model whose layers are defined in another order than they are called."""

    def __init__(self):
        super().__init__(name="my_mlp")
        self.head = L.Dense(3, name="head")  # defined first, called last
        self.body = L.Dense(8, activation="sigmoid", name="body")

    def call(self, x):
        return self.head(self.body(x))


def sequential():
    """Dense relu → Dense tanh → logits, on 6 inputs."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, activation="relu", name="d0"),
            L.Dense(8, activation="tanh", name="d1"),
            L.Dense(3, name="out"),
        ],
        name="seq",
    )


def conv_skip():
    """Two convolutions with a skip connection around the second, on 8×8×1 images."""
    inp = keras.Input((8, 8, 1))
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="c0")(inp)
    b = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(a)
    s = L.Add(name="skip")([a, b])
    return keras.Model(inp, L.Dense(3, name="out")(L.GlobalAveragePooling2D(name="gap")(s)), name="cnn")


def embedding_lstm():
    """Embedding → LSTM → logits, on 5 tokens out of 20."""
    inp = keras.Input((5,), dtype="int32")
    h = L.LSTM(6, name="lstm")(L.Embedding(20, 4, name="emb")(inp))
    return keras.Model(inp, L.Dense(3, name="out")(h), name="rnn")


def batchnorm():
    """Dense without bias → BatchNormalization → relu → logits, on 6 inputs."""
    return keras.Sequential(
        [
            keras.Input((6,)),
            L.Dense(8, use_bias=False, name="d0"),
            L.BatchNormalization(name="bn"),
            L.Activation("relu", name="act"),
            L.Dense(3, name="out"),
        ],
        name="bnnet",
    )


def zoo():
    """{name: (model, x, y)} of every kind above, with 16 examples each; the same in every process."""
    rng = np.random.default_rng(0)
    xs = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    y = rng.integers(0, 3, 16).astype("int32")
    keras.utils.set_random_seed(0)
    out = {}
    out["sequential"] = (sequential(), xs(16, 6))
    out["conv-skip"] = (conv_skip(), xs(16, 8, 8, 1))
    sub = MyMLP()
    sub(xs(2, 5))
    out["subclassed"] = (sub, xs(16, 5))
    tokens = rng.integers(0, 20, (16, 5)).astype("int32")
    out["lstm"] = (embedding_lstm(), tokens)
    out["batchnorm"] = (batchnorm(), xs(16, 6))
    return {k: (m, x, y) for k, (m, x) in out.items()}
