"""The singular values of a deep MLP's Jacobian at initialization (dynamical isometry), measured and predicted.

What is measured. For one example, hidden layer l of the MLP computes the
pre-activation `z_l` (`hidden_l`'s output); the Jacobian

    J_l = ∂z_l / ∂z_0 = W_l^T D_(l-1) · · · W_1^T D_0,      D_k = diag(φ′(z_k))

maps a change of the first hidden layer's pre-activation to layer l's. It is
a `width × width` matrix, the product of `l` square layers: the object of
Saxe et al. (2014) and Pennington, Schoenholz & Ganguli (2017). The first
kernel (784 inputs to `width` units) is left out on purpose: it is not
square, and its own spread (Marchenko–Pastur of ratio width/784) would blur
the depth dependence that the theory is about. A network is *dynamically
isometric* when the singular values of `J_(depth-1)` all stay close to one
value as the depth grows.

`jacobians` computes every `J_l` of one example exactly, in one forward-mode
pass: the example's `z_0` is repeated `width` times and pushed through the
hidden layers with the identity matrix as its tangents (TensorFlow's
`ForwardAccumulator`, `jax.jvp`), so the tangent of `z_l` is `J_l`'s
transpose. Its cost is a forward pass of a batch of `width`, which is why the
measurement is exact up to `MAX_WIDTH`; wider layers are refused rather than
approximated. Singular values are computed in float64 from the float32
Jacobian.

What is predicted (free probability, large width). With the weights and the
`D_k` asymptotically free, the S-transform of `J_l J_l^T` is the product of
those of its factors (Pennington et al. 2017, eq. 9), so to first order in
the S-transform the *mean* of the squared singular values λ = s² multiplies
and their *normalized variance* `Var(λ)/E[λ]²` adds, layer by layer:

    E[λ](l)        = Π_(k<l) σ_w,k+1²·E[φ′(√q_k·z)²]          (= Π χ_k, the mean-field χ)
    Var(λ)/E[λ]²(l) = Σ_(k<l) (κ_W + κ_D(q_k)),   κ_D(q) = E[φ′(√q·z)⁴]/E[φ′(√q·z)²]² − 1

with `q_k` the mean-field second moment of `z_k` (`bench.theory`), κ_W = 0
for orthogonal weights (W^T W = σ_w²·I) and κ_W = 1 for i.i.d. weights of
any distribution (Marchenko–Pastur of ratio 1). Hence: a deep linear network
with orthogonal weights is exactly isometric (all s = σ_w^l); with Gaussian
weights the spread grows like l (its squared singular values follow the
Fuss–Catalan law, whose upper edge is `σ_w^(2l)·(l+1)^(l+1)/l^l`, about
`e·(l+1)·σ_w^(2l)`); ReLU adds κ_D = 1 per layer whatever the weights, so
ReLU is never isometric; tanh at σ_w² = 1, σ_b² = 0 has q_k → 0, where φ′ → 1
and κ_D → 0, so with orthogonal weights its spread stays O(1) while with
Gaussian weights it still grows like l. These two moments are exact at
large width; the full density (through the S-transform) and the finite-width
corrections, of order l/width, are not computed here.

References:
    - Saxe, McClelland, Ganguli (2014), "Exact solutions to the nonlinear
      dynamics of learning in deep linear neural networks".
    - Pennington, Schoenholz, Ganguli (2017), "Resurrecting the sigmoid in
      deep learning through dynamical isometry: theory and practice".
    - Penson, Życzkowski (2011), "Product of Ginibre matrices: Fuss–Catalan
      and Raney distributions".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vgbench.bench.config import JACOBIAN_MAX_WIDTH, jacobian_unsupported
from vgbench.bench.results import JACOBIAN_COLUMNS

__all__ = [
    "JACOBIAN_COLUMNS",
    "MAX_WIDTH",
    "SPREAD_COLUMNS",
    "fuss_catalan_edge",
    "fuss_catalan_moment",
    "jacobians",
    "measure",
    "predict",
    "run_summary",
    "singular_values",
    "spread",
    "unsupported",
]

# Widest hidden layer whose Jacobians are computed exactly, and why a run's spectrum
# cannot be measured: defined beside the config that they check (`bench.config`).
MAX_WIDTH = JACOBIAN_MAX_WIDTH
unsupported = jacobian_unsupported

# The table's columns (`bench.results.JACOBIAN_COLUMNS`), one row per (run,
# example, layer, singular value): `layer_index` is l of J_l = ∂z_l/∂z_0 (the
# number of layers in the product), `index` the rank of the singular value (0
# the largest), `example` the index of the training example.

# `spread`'s columns: per (run, example, layer), the mean of s², the
# normalized variance Var(s²)/E[s²]², the largest and smallest s.
SPREAD_COLUMNS = ["run_id", "example", "layer_index", "mean_sq", "spread", "s_max", "s_min"]


# --------------------------------------------------------------------------- measurement


def _chain(model, depth: int):
    """The layers after `hidden_0` up to `hidden_{depth-1}`, in order, and the names of the hidden weight layers."""
    names = [layer.name for layer in model.layers]
    if "hidden_0" not in names or f"hidden_{depth - 1}" not in names:
        raise ValueError(f"Model {model.name!r} has no hidden_0 .. hidden_{depth - 1} layers (see models.build_model).")
    start, stop = names.index("hidden_0"), names.index(f"hidden_{depth - 1}")
    layers = model.layers[start + 1 : stop + 1]
    for layer in layers:
        inbound = getattr(layer, "_inbound_nodes", [])
        if any(len(node.input_tensors) != 1 for node in inbound):
            raise ValueError(f"Layer {layer.name!r} has several inputs; the hidden layers are no single chain.")
    targets = {f"hidden_{i}" for i in range(1, depth)}
    return layers, targets


def jacobians(model, x, depth: int) -> np.ndarray:
    """Every `J_l = ∂z_l/∂z_0`, l = 1 .. depth-1, of each example, at the model's current weights.

    Args:
        model: A `models.build_model` MLP (a single chain of hidden layers).
        x: Examples, shape `(k, input_dim)`.
        depth: The model's number of hidden layers.

    Returns:
        float32 array of shape `(k, depth - 1, width, width)`; `[e, l - 1]`
        is `J_l` of example e (its transpose: the singular values are the same).
    """
    import keras

    layers, targets = _chain(model, depth)
    first = model.get_layer("hidden_0")

    def forward(z):
        outs = []
        for layer in layers:
            z = layer(z, training=False)
            if layer.name in targets:
                outs.append(z)
        return outs

    x = np.asarray(x, dtype="float32")
    backend = keras.backend.backend()
    out = []
    for example in x:
        z0 = keras.ops.convert_to_numpy(first(example[None, :], training=False))
        width = z0.shape[-1]
        primal = np.repeat(z0, width, axis=0)
        tangent = np.eye(width, dtype="float32")
        if backend == "tensorflow":
            import tensorflow as tf

            primal = tf.constant(primal)
            with tf.autodiff.ForwardAccumulator(primal, tf.constant(tangent)) as acc:
                outs = forward(primal)
            tangents = [acc.jvp(o).numpy() for o in outs]
        elif backend == "jax":
            import jax

            _, tangents = jax.jvp(forward, (primal,), (tangent,))
            tangents = [np.asarray(t) for t in tangents]
        else:
            raise ValueError(f"No Jacobian for the {backend} backend; backends: tensorflow, jax")
        out.append(np.stack(tangents))
    return np.stack(out)


def singular_values(jac) -> np.ndarray:
    """The singular values of each matrix of `jac` (`(..., n, n)`), largest first, in float64.

    Computed by TensorFlow (installed with either backend: it feeds the data),
    whose thread pool the run configures: numpy's multithreaded LAPACK is
    tens of times slower on a machine whose cores the workers already share.
    Non-finite matrices (an overflowing network) give NaN singular values.
    """
    import tensorflow as tf

    jac = np.asarray(jac, dtype=np.float64)
    finite = np.isfinite(jac).all(axis=(-2, -1))
    s = tf.linalg.svd(tf.constant(np.where(finite[..., None, None], jac, 0.0)), compute_uv=False).numpy()
    s = np.sort(s, axis=-1)[..., ::-1]
    return np.where(finite[..., None], s, np.nan)


def measure(model, x, depth: int, run_id: str = "") -> pd.DataFrame:
    """The Jacobian spectrum table (`JACOBIAN_COLUMNS`) of `model` on the examples `x`."""
    s = singular_values(jacobians(model, x, depth))
    k, layers, n = s.shape
    example, layer, index = np.meshgrid(np.arange(k), np.arange(1, layers + 1), np.arange(n), indexing="ij")
    return pd.DataFrame(
        {
            "run_id": run_id,
            "example": example.ravel(),
            "layer_index": layer.ravel(),
            "index": index.ravel(),
            "singular_value": s.ravel(),
        }
    )[JACOBIAN_COLUMNS]


def spread(table: pd.DataFrame) -> pd.DataFrame:
    """Per (run, example, layer): the mean of s², `Var(s²)/E[s²]²`, the largest and the smallest s.

    The normalized variance is 0 for an isometry (all singular values equal,
    whatever their common value) and is the quantity `predict` gives.
    """
    if table.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in SPREAD_COLUMNS})
    t = table.assign(sq=table["singular_value"].astype("float64") ** 2)
    g = t.groupby(["run_id", "example", "layer_index"], sort=True)
    out = g["sq"].agg(mean_sq="mean", var_sq=lambda v: v.var(ddof=0)).reset_index()
    out["spread"] = out["var_sq"] / out["mean_sq"] ** 2
    s = g["singular_value"].agg(s_max="max", s_min="min").reset_index()
    return out.merge(s, on=["run_id", "example", "layer_index"])[SPREAD_COLUMNS]


def run_summary(table: pd.DataFrame) -> dict:
    """A run's headline numbers (its runs.parquet columns): the deepest J_l's mean s² and spread, over examples."""
    if table.empty:
        return {}
    per = spread(table)
    last = per[per["layer_index"] == per["layer_index"].max()]
    return {
        "jacobian_mean_sq": float(last["mean_sq"].mean()),
        "jacobian_spread": float(last["spread"].mean()),
        "jacobian_s_max": float(last["s_max"].max()),
    }


# --------------------------------------------------------------------------- theory


def fuss_catalan_moment(layers: int, k: int) -> float:
    """k-th moment of the Fuss–Catalan law of order `layers`: `C((layers+1)k, k)/(layers·k + 1)`.

    The moments of the squared singular values of a product of `layers`
    square Ginibre matrices of entry variance 1/n, at large n.
    """
    return math.comb((layers + 1) * k, k) / (layers * k + 1)


def fuss_catalan_edge(layers: int) -> float:
    """Upper edge of the Fuss–Catalan law of order `layers`: `(layers+1)^(layers+1)/layers^layers`."""
    return (layers + 1) ** (layers + 1) / layers**layers


def _kappa_w(initializer: str) -> float:
    """The normalized variance of `W^T W`'s spectrum for a square kernel: 0 orthogonal, 1 i.i.d."""
    return 0.0 if initializer.split("(")[0] == "orthogonal" else 1.0


def _derivative_moments(activation: str, q: float) -> tuple[float, float]:
    """`(E[φ′(√q·z)²], E[φ′(√q·z)⁴])` for z ~ N(0, 1), by adaptive quadrature split at the kinks."""
    from scipy import integrate

    from vgbench.bench import theory

    sd = math.sqrt(max(q, 0.0))
    if sd == 0.0:
        d = float(theory.phi_prime(activation, np.array([0.0]))[0])
        return d**2, d**4
    kinks = [k / sd for k in (-3.0, 0.0, 3.0, 6.0) if abs(k / sd) < 10.0]

    def moment(p):
        f = lambda z: float(theory.phi_prime(activation, np.array([sd * z]))[0]) ** p * math.exp(-z * z / 2)  # noqa: E731
        value, _ = integrate.quad(f, -10.0, 10.0, points=kinks or None, limit=200)
        return value / math.sqrt(2 * math.pi)

    return moment(2), moment(4)


def predict(config, input_second_moment: float = 1.0) -> pd.DataFrame:
    """The large-width prediction of `J_l`'s spectrum for each l = 1 .. depth-1 of a run.

    Args:
        config: A `bench.config.RunConfig` (an MLP the theory covers).
        input_second_moment: The example's `E[x²]` (1 for standardized inputs).

    Returns:
        One row per layer_index with ``mean_sq`` (E[s²] = Π χ), ``spread``
        (Var(s²)/E[s²]², see the module docstring) and ``edge`` (the largest
        s² of the Fuss–Catalan law for a linear network of i.i.d. weights;
        NaN where the theory gives no closed form for it). Empty when the
        mean-field theory does not cover the run (`bench.theory.predict_config`).
    """
    from vgbench.bench import theory

    pred = theory.predict_config(config, input_second_moment)
    columns = ["layer_index", "mean_sq", "spread", "edge"]
    if not pred.applicable or config.depth < 2:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns})
    kappa_w = _kappa_w(config.initializer)
    linear = config.activation == "linear"
    rows, mean, total = [], 1.0, 0.0
    for layer_index in range(1, config.depth):
        before = pred.layers[layer_index - 1]  # D_(l-1) and W_l
        e2, e4 = _derivative_moments(config.activation, before.q)
        mean *= before.chi
        total += kappa_w + (e4 / e2**2 - 1.0 if e2 > 0 else math.nan)
        if linear:  # i.i.d.: the Fuss–Catalan edge; orthogonal: every s² equals the mean
            edge = mean * fuss_catalan_edge(layer_index) if kappa_w == 1.0 else mean
        else:
            edge = math.nan
        rows.append((layer_index, mean, total, edge))
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- report

# The configuration of a run that its spectrum depends on: one line of the report's figure each.
PROFILE_KEYS = ("activation", "initializer", "depth", "width", "bias_initializer")


def spread_by_depth(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The spectrum's spread and mean by layer, per configuration: measured (median and range) and predicted.

    Args:
        table: The Jacobian spectrum table (`JACOBIAN_COLUMNS`).
        runs: The runs table (config columns; ``preprocessing`` sets the
            prediction's E[x²]: 1 for standardized inputs, else the mean of
            MNIST scaled to [0, 1], `bench.report.predictions.SCALED_SECOND_MOMENT`).

    Returns:
        Long-form: one row per (configuration, layer_index, source) with
        ``label``, ``source`` ("measured" or "theory"), ``spread``,
        ``spread_lo``, ``spread_hi``, ``mean_sq``, ``mean_sq_lo``,
        ``mean_sq_hi`` and ``n`` (examples × runs); the theory's range is
        its value. Empty when no run measured its spectrum.
    """
    from vgbench.bench.config import RunConfig

    columns = ["label", "source", *PROFILE_KEYS, "layer_index", "n"]
    stats = [f"{q}{suffix}" for q in ("spread", "mean_sq") for suffix in ("", "_lo", "_hi")]
    if table.empty or runs.empty:
        return pd.DataFrame(columns=columns + stats)
    keys = [k for k in PROFILE_KEYS if k in runs.columns]
    per = spread(table).merge(runs[["run_id", *keys, "preprocessing"]].drop_duplicates("run_id"), on="run_id")
    rows = []
    for values, group in per.groupby(keys, sort=True):
        config = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        label = f"{config['activation']} + {config['initializer']}"
        if len(per.groupby(keys)) > 1 and per["depth"].nunique() > 1:
            label += f", depth {config['depth']}"
        for layer_index, g in group.groupby("layer_index"):
            row = {"label": label, "source": "measured", **config, "layer_index": layer_index, "n": len(g)}
            for q in ("spread", "mean_sq"):
                row.update({q: g[q].median(), f"{q}_lo": g[q].min(), f"{q}_hi": g[q].max()})
            rows.append(row)
        try:
            run = RunConfig(**{k: (int(v) if k in ("depth", "width") else v) for k, v in config.items()})
        except (ValueError, TypeError):
            continue
        standardized = (group["preprocessing"] == "standardize").all()
        moment = 1.0 if standardized else _scaled_second_moment()
        for pred in predict(run, moment).to_dict("records"):
            row = {"label": label, "source": "theory", **config, "layer_index": pred["layer_index"], "n": 0}
            for q in ("spread", "mean_sq"):
                row.update({q: pred[q], f"{q}_lo": pred[q], f"{q}_hi": pred[q]})
            rows.append(row)
    return pd.DataFrame(rows, columns=columns + stats)


def _scaled_second_moment() -> float:
    from vgbench.bench.report.predictions import SCALED_SECOND_MOMENT

    return SCALED_SECOND_MOMENT["mnist"]
