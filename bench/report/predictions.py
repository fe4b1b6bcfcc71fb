"""Mean-field predictions of a report's runs, to put beside their measurements.

`predict_runs` computes `bench.theory.predict_config` for every run of a
results directory (pure numpy, no training) and returns them as tables
keyed by run_id: the predicted per-layer backward and forward factors, χ₁,
the depth scale ξ and the phase, and the predicted per-layer profiles.

The recursions start from `q_0 = σ_w,0²·E[x²]`, so they need the inputs'
second moment. Where the data named in the manifest can be read (its path
exists and its checksum is the recorded one), each run's step-0 batch is
rebuilt exactly as training built it (the first `batch_size` of its
`train_samples` training examples, after its preprocessing) and every
example starts from its own `E[x²]` (`bench.theory.example_second_moments`):
that is what the measurement at step 0 averages over. Otherwise the mean
alone is used, which is approximate: exactly 1 for standardized inputs
(by construction), `SCALED_SECOND_MOMENT` for the standard datasets scaled
to [0, 1]; the spread of `E[x²]` across examples is then ignored, which
moves the prediction for activations whose χ depends on q (gelu, swish,
tanh, ...). Each input description says which one was used.
"""

from __future__ import annotations

import dataclasses
import math
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from vgbench.bench import theory
from vgbench.bench.config import CUSTOM_ARCH
from vgbench.bench.results import manifest_datasets
from vgbench.bench.utils import plain

# Measured and predicted per-layer factors agree when their ratio is within
# this factor either way: |log10(measured / predicted)| <= log10(TOLERANCE).
TOLERANCE = 1.1

# E[x²] of the whole standard training set scaled to [0, 1] (x / 255),
# for when the data cannot be read.
SCALED_SECOND_MOMENT = {"mnist": 0.11200}

# Per-run columns of `predict_runs`, in order.
RUN_COLUMNS = [
    "run_id",
    "theory_applicable",
    "theory_reason",
    "predicted_backward_factor",
    "predicted_forward_factor",
    "predicted_chi1",
    "predicted_depth_scale",
    "predicted_phase",
    "predicted_q_star",
    "input_second_moment",
    "input_exact",
]

LAYER_COLUMNS = ["run_id", "layer_index", "predicted_backward_rms", "predicted_preact_rms"]

# The fields of a run that decide its step-0 batch.
_INPUT_KEYS = ("dataset", "preprocessing", "train_samples", "batch_size")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The input second moments the predictions of some runs start from.

    Attributes:
        values: one `E[x²]` per example of the step-0 batch, or a single mean.
        exact: whether they come from the data itself (the batch measured at step 0).
        text: how they were obtained, in words.
    """

    values: np.ndarray
    exact: bool
    text: str


@dataclasses.dataclass
class Predictions:
    """The predictions of a report's runs.

    Attributes:
        runs: one row per run, RUN_COLUMNS.
        layers: one row per (run, hidden layer), LAYER_COLUMNS; the
            backward RMS is relative to the RMS of the gradient with respect
            to the logits, the pre-activation RMS absolute.
        inputs: per input setting (`_INPUT_KEYS` and ``text``, ``exact``,
            ``mean``), JSON-ready.
    """

    runs: pd.DataFrame
    layers: pd.DataFrame
    inputs: list[dict]


def _data_info(manifest: dict, name: str) -> dict:
    """The manifest's description of dataset ``name`` (one dataset, or one entry per name)."""
    return manifest_datasets(manifest).get(name, {})


def _load(info: dict):
    """The dataset the manifest describes, when its file is here (or it is generated) with the recorded checksum.

    None when it cannot be had.
    """
    from vgbench.bench import data as data_mod

    source = str(info.get("source") or "")
    generated = source.startswith("generated:")  # made by a seeded generator: made again here
    path = source.split(":", 1)[1] if source.startswith("keras-cache:") else source
    if not info.get("name") or not generated and (not path or not Path(path).exists()):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = data_mod.load_dataset(info["name"], None if generated else path, allow_nonstandard=True)
    except Exception:  # unreadable now: the report falls back to the mean
        return None
    return ds if ds.checksum == info.get("checksum") else None


def _fallback(dataset: str, preprocessing: str, why: str) -> Inputs | None:
    if preprocessing == "standardize":
        text = f"E[x²] = 1 (standardized inputs, by construction; {why}, so the spread across examples is ignored)"
        return Inputs(np.array([1.0]), False, text)
    if preprocessing == "scale" and dataset in SCALED_SECOND_MOMENT:
        m = SCALED_SECOND_MOMENT[dataset]
        text = (
            f"E[x²] = {m:.4g} (the whole {dataset} training set scaled to [0, 1]; {why}, "
            "so the subset and the spread across examples are ignored)"
        )
        return Inputs(np.array([m]), False, text)
    return None


def input_moments(runs: pd.DataFrame, manifest: dict, load: bool = True) -> dict[tuple, Inputs | None]:
    """The input second moments of each input setting of ``runs``.

    Args:
        runs: the runs table (``dataset, preprocessing, train_samples, batch_size``).
        manifest: the results' manifest (where the data came from, its checksum).
        load: read the data when it is available; False uses the means alone.

    Returns:
        {(dataset, preprocessing, train_samples, batch_size): `Inputs`, or
        None when E[x²] is unknown (no data and no standard value)}.
    """
    from vgbench.bench import data as data_mod

    keys = {tuple(plain(row.get(k)) for k in _INPUT_KEYS) for row in runs.to_dict("records")}
    loaded, out = {}, {}
    for key in sorted(keys, key=str):
        dataset, preprocessing, train_samples, batch_size = key
        if dataset not in loaded:
            loaded[dataset] = _load(_data_info(manifest, dataset)) if load else None
        ds = loaded[dataset]
        why = "the data was not read" if not load else "the data named in the manifest is not available"
        if ds is None:
            out[key] = _fallback(dataset, preprocessing, why)
            continue
        try:
            arrays = data_mod.prepare(
                ds,
                preprocessing=preprocessing,
                flatten=True,
                train_samples=int(train_samples) if train_samples is not None else None,
                test_samples=1,
            )
        except Exception:  # e.g. a preprocessing this data does not allow: as if it were not here
            out[key] = _fallback(dataset, preprocessing, "the data could not be prepared")
            continue
        n = min(int(batch_size), len(arrays.x_train))
        values = theory.example_second_moments(arrays.x_train[:n])
        text = (
            f"E[x²] of each of the {n} examples measured at step 0 ({preprocessing}d {dataset}; "
            f"mean {values.mean():.4g}, from {values.min():.3g} to {values.max():.3g})"
        )
        out[key] = Inputs(values, True, text)
    return out


def predict_runs(runs: pd.DataFrame, manifest: dict, load: bool = True) -> Predictions:
    """The mean-field prediction of every run (see the module docstring for its inputs).

    Runs the theory does not cover (CNNs, normalization, residual and
    dropout fixes, unknown E[x²]) get ``theory_applicable`` False and the
    reason; their numbers are NaN.
    """
    moments = input_moments(runs, manifest, load=load)
    fields = ("arch", "depth", "width", "activation", "initializer", "fix", "dataset")
    cache, rows, layer_frames = {}, [], []
    for row in runs.to_dict("records"):
        key = tuple(plain(row.get(k)) for k in _INPUT_KEYS)
        inputs = moments.get(key)
        config_key = (tuple(plain(row.get(f)) for f in fields), key)
        if config_key not in cache:
            cache[config_key] = _predict(row, inputs, manifest)
        p = cache[config_key]
        rows.append(
            {
                "run_id": row["run_id"],
                "theory_applicable": bool(p.applicable),
                "theory_reason": p.reason,
                "predicted_backward_factor": p.factor,
                "predicted_forward_factor": p.forward_factor,
                "predicted_chi1": p.chi1,
                "predicted_depth_scale": p.depth_scale,
                "predicted_phase": p.phase,
                "predicted_q_star": p.q_star,
                "input_second_moment": p.input_second_moment if inputs is not None else np.nan,
                "input_exact": bool(inputs is not None and inputs.exact),
            }
        )
        if p.applicable:
            layer_frames.append(
                pd.DataFrame(
                    {
                        "run_id": row["run_id"],
                        "layer_index": [layer.layer_index for layer in p.layers],
                        "predicted_backward_rms": [layer.backward_rms for layer in p.layers],
                        "predicted_preact_rms": [layer.preact_rms for layer in p.layers],
                    }
                )
            )
    layers = pd.concat(layer_frames, ignore_index=True) if layer_frames else pd.DataFrame(columns=LAYER_COLUMNS)
    described = [
        {**dict(zip(_INPUT_KEYS, key)), "exact": v.exact, "mean": float(np.mean(v.values)), "text": v.text}
        if v is not None
        else {**dict(zip(_INPUT_KEYS, key)), "exact": False, "mean": None, "text": "E[x²] unknown"}
        for key, v in moments.items()
    ]
    return Predictions(pd.DataFrame(rows, columns=RUN_COLUMNS), layers, described)


def _predict(row: dict, inputs: Inputs | None, manifest: dict) -> theory.Prediction:
    if plain(row.get("arch")) == CUSTOM_ARCH:
        return theory.Prediction(
            activation=str(row.get("activation")),
            initializer=str(row.get("initializer")),
            depth=int(row["depth"]),
            width=0,
            sigma_b2=0.0,
            input_second_moment=math.nan,
            applicable=False,
            reason=f"{plain(row.get('model')) or 'the model'} was not built by vgbench: the theory models its MLP",
        )
    config = types.SimpleNamespace(**{k: plain(row.get(k)) for k in ("arch", "activation", "initializer", "fix")})
    config.depth, config.width = int(row["depth"]), int(row["width"])
    config.dataset = plain(row.get("dataset")) or "mnist"
    base = dict(
        activation=str(config.activation),
        initializer=str(config.initializer),
        depth=config.depth,
        width=config.width,
        sigma_b2=0.0,
        input_second_moment=math.nan,
    )
    if inputs is None:
        reason = (
            f"E[x²] of {config.dataset} with preprocessing {row.get('preprocessing')!r} is unknown without the data"
        )
        return theory.Prediction(**base, applicable=False, reason=reason)
    info = _data_info(manifest, config.dataset)
    shape = info.get("image_shape")
    input_dim = int(np.prod(shape)) if shape else None
    num_classes = int(info.get("num_classes") or theory.NUM_CLASSES)
    try:
        return theory.predict_config(config, inputs.values, input_dim=input_dim, num_classes=num_classes)
    except Exception as e:  # a name or setting the theory cannot read: not applicable, the report goes on
        return theory.Prediction(**base, applicable=False, reason=f"{type(e).__name__}: {e}")


def deviation(measured, predicted) -> float:
    """|log10(measured / predicted)|, NaN unless both are finite and positive."""
    try:
        m, p = float(measured), float(predicted)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(m) and math.isfinite(p) and m > 0 and p > 0):
        return math.nan
    return abs(math.log10(m / p))
