"""Diagnoses a model of your own: per-layer gradients and signals of any Keras 3 model, in vgbench's layout.

`diagnose` takes a Keras model (Sequential, functional or subclassed; built
by you or loaded from a ``.keras`` file) and data, measures the model at its
current weights (step 0), trains it for ``steps`` optimizer steps with
`bench.instrumentation.GradientNormLogger`, and returns the same tables as a
`vgbench run` (`bench.results.Results`). With ``out`` it writes them as a
results directory of one run (manifest with provenance, runs/layers/
history/variables tables, one run folder; under the directory's lock, every
file replaced atomically) and builds its report. ``vgbench diagnose
MODEL.keras`` is the same from the command line (`run_cli`).

The run's identity: ``arch="custom"``, ``activation`` and ``initializer``
``"n/a"`` (the mean-field theory is marked not applicable), the model's
name in ``model``, the sha256 of the model file (``model_sha256``, empty for
a model from Python) and of its weights at step 0 (``weights_sha256``, and
its first 12 digits in ``weights``, which tells runs of one model name
apart in the report); the run_id is ``custom-NAME-HASH``, the hash over all
of it, so another model, other weights or other settings make another
run. ``depth`` is the index of
the last instrumented layer (the number of layers with weights minus one)
and ``width`` 0 (not defined for a model of any shape).

Settings not given are those of the ``default`` suite (batch size, steps,
cadences, sample counts, preprocessing of MNIST-like images; optimizer and
learning rate for a model that has no compile config), so that a diagnosis
compares with the shipped report.

Usage::

    import vgbench  # before keras: portable numerics
    from vgbench.bench.diagnose import diagnose
    results = diagnose(model, x_train, y_train, x_test, y_test, steps=200, out="diag/")
    results.layers  # one row per (step, layer)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgbench.bench import backend as backend_mod
from vgbench.bench.config import CUSTOM_ARCH as ARCH
from vgbench.bench.config import NOT_APPLICABLE, stable_identity
from vgbench.bench.errors import DataError, UsageError
from vgbench.bench.utils import closest, one_line, slug
from vgbench.models.registry import shorten

# The suite name of a diagnosis in the manifest.
SUITE = "diagnose"

# The optimizers `--optimizer` names (Keras' own, plus vgbench's "momentum").
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam", "lion")
MOMENTUM = 0.9

# Preprocessings of `diagnose`'s data: vgbench's two, and "none" (the arrays as stored).
PREPROCESSINGS = ("scale", "standardize", "none")

# `--dataset` for an .npz of one's own arrays (`--data FILE.npz`).
NPZ_DATASET = "npz"
# The dataset name of arrays given to `diagnose` in Python.
ARRAYS_DATASET = "arrays"

# Evaluation periods of a diagnosis: at most this many (the default suite's epochs).
MAX_EVALUATIONS = 5


def defaults() -> dict:
    """The settings a diagnosis starts from: the ``default`` suite's, as `vgbench run` uses them."""
    from vgbench.bench import suites
    from vgbench.bench.config import RunConfig

    values = {k: getattr(RunConfig, k) for k in ("optimizer", "learning_rate", "seed", "log_every", "act_every")}
    values.update(batch_size=RunConfig.batch_size, max_steps=0, preprocessing=RunConfig.preprocessing)
    values.update(suites.default_settings())
    return values


# --------------------------------------------------------------------------- #
# Compile: the model's own config, or what the caller gives
# --------------------------------------------------------------------------- #


def get_loss(spec):
    """A Keras loss from a spec: ``"mse"``, ``"sparse_categorical_crossentropy(from_logits=True)"``, or an object.

    Raises:
        UsageError: unknown name or bad parameters; the message lists the valid names.
    """
    import keras

    from vgbench.models.registry import parse_spec

    if not isinstance(spec, str):
        return spec
    names = _loss_names()
    try:
        name, kwargs = parse_spec(spec)
    except ValueError:
        raise UsageError(
            f"Argument `loss` must be a loss name, with parameters as name(param=value). "
            f"Received: loss={shorten(repr(spec))}"
        ) from None
    if name not in names:
        try:
            if not kwargs:
                return keras.losses.get(name)
        except (ValueError, TypeError):
            pass
        raise UsageError(
            f"Unknown loss {shorten(repr(name))}.{closest(name, sorted(names))} "
            f"Valid losses: {', '.join(sorted(names))}"
        )
    try:
        return names[name](**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(
            f"Invalid parameters for loss {name!r}: {one_line(e)}. Received: loss={shorten(repr(spec))}"
        ) from None


def _loss_names() -> dict:
    """snake_case name → Keras loss class, for every `keras.losses.Loss` subclass Keras exports."""
    import re

    import keras

    out = {}
    for attr in dir(keras.losses):
        cls = getattr(keras.losses, attr)
        if isinstance(cls, type) and issubclass(cls, keras.losses.Loss) and cls is not keras.losses.Loss:
            # MeanSquaredError → mean_squared_error, KLDivergence → kl_divergence
            out[re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", attr).lower()] = cls
    return out


def get_optimizer(name: str, learning_rate: float):
    """A fresh Keras optimizer by name (`OPTIMIZERS`; ``momentum`` is SGD with momentum 0.9).

    Raises:
        UsageError: unknown name.
    """
    import keras

    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise UsageError(
            f"Argument `optimizer` must be one of {', '.join(OPTIMIZERS)}. Received: optimizer={shorten(repr(name))}"
            + closest(key, list(OPTIMIZERS))
        )
    if key == "momentum":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=MOMENTUM)
    return keras.optimizers.get({"class_name": key, "config": {"learning_rate": learning_rate}})


def _check_learning_rate(value):
    from vgbench.bench.config import MAX_LEARNING_RATE

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 < value <= MAX_LEARNING_RATE:
        raise UsageError(
            f"Argument `learning_rate` must be a finite number in (0, {MAX_LEARNING_RATE:g}]. "
            f"Received: learning_rate={shorten(repr(value))}"
        )
    return float(value)


def compile_for_diagnosis(model, loss=None, optimizer=None, learning_rate=None) -> dict:
    """Compiles ``model`` for a diagnosis: its own compile config with a fresh optimizer, or what is given.

    The optimizer is always a fresh copy (same class and settings, no
    state), so that step 1 is the first update of the diagnosis. The loss,
    metrics and other compile settings are the model's own unless ``loss``
    is given. A model that was never compiled needs ``loss``; it then gets
    the ``default`` suite's optimizer and learning rate, unless given, and
    an accuracy metric.

    Args:
        model: a Keras model.
        loss: a loss spec for `get_loss`, or None for the model's own.
        optimizer: an optimizer name (`OPTIMIZERS`), or None for the model's own.
        learning_rate: the learning rate, or None for the optimizer's own.

    Returns:
        ``{"optimizer", "learning_rate", "loss"}``: names and value for the run's config.

    Raises:
        UsageError: no compile config and no ``loss``; a bad name or value.
    """
    compiled = bool(getattr(model, "compiled", False)) and getattr(model, "loss", None) is not None
    if not compiled and loss is None:
        raise UsageError(
            f"Model {model.name!r} has no compile config (it was saved or built without `compile()` and a loss); "
            "pass a loss, e.g. --loss 'sparse_categorical_crossentropy(from_logits=True)'."
        )
    if learning_rate is not None:
        learning_rate = _check_learning_rate(learning_rate)
    saved = getattr(model, "_compile_config", None)
    kwargs = dict(saved.config) if compiled and saved is not None else {}
    if compiled:
        kwargs.setdefault("loss", model.loss)
    else:
        kwargs["metrics"] = ["accuracy"]
    if loss is not None:
        kwargs["loss"] = get_loss(loss)
    if optimizer is not None:
        settings = defaults()
        opt = get_optimizer(optimizer, learning_rate if learning_rate is not None else settings["learning_rate"])
    elif compiled:
        old = model.optimizer
        config = old.get_config()
        if learning_rate is not None:
            config["learning_rate"] = learning_rate
        opt = type(old).from_config(config)
    else:
        settings = defaults()
        lr = learning_rate if learning_rate is not None else settings["learning_rate"]
        opt = get_optimizer(settings["optimizer"], lr)
    kwargs["optimizer"] = opt
    model.compile(**kwargs)
    return {
        "optimizer": _optimizer_name(opt),
        "learning_rate": _learning_rate_of(opt),
        "loss": _loss_name(kwargs["loss"]),
    }


def _optimizer_name(opt) -> str:
    name = type(opt).__name__.lower()
    if name == "sgd" and float(getattr(opt, "momentum", 0.0) or 0.0) > 0:
        return "momentum"
    return name


def _learning_rate_of(opt) -> float:
    try:
        # Stored in float32: 0.01 reads back as 0.009999999776; the 7 digits float32 holds.
        return float(f"{float(np.asarray(opt.learning_rate)):.7g}")
    except (TypeError, ValueError):  # a schedule
        return math.nan


def _loss_name(loss) -> str:
    if isinstance(loss, str):
        return loss
    for attr in ("name", "__name__"):
        value = getattr(loss, attr, None)
        if isinstance(value, str):
            return value
    return type(loss).__name__


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def model_input_shape(model):
    """The shape of one input of a single-input model (None for unknown sizes), or None when it is not known."""
    inputs = getattr(model, "inputs", None)
    try:
        if inputs and len(inputs) == 1:
            return tuple(None if d is None else int(d) for d in inputs[0].shape[1:])
    except (AttributeError, TypeError, ValueError):
        pass
    return None


def fit_inputs(x, shape, what="x_train"):
    """``x`` with each example reshaped to a model input of ``shape``, where that is unambiguous.

    Examples already of that shape are kept; with every size known, any
    example of as many values is reshaped (a 28×28 image for a 784-vector
    input, or the other way round, or with a channel axis of 1); with
    unknown sizes, only a missing trailing channel axis of 1 is added.

    Raises:
        DataError: the examples cannot be reshaped to the model's input;
            the message names both shapes.
    """
    if shape is None or not isinstance(x, np.ndarray):
        return x
    example = tuple(int(d) for d in x.shape[1:])

    def matches(candidate):
        return len(candidate) == len(shape) and all(s is None or s == c for s, c in zip(shape, candidate, strict=True))

    if matches(example):
        return x
    if all(s is not None for s in shape) and math.prod(shape) == math.prod(example):
        return x.reshape((len(x), *shape))
    if len(shape) == len(example) + 1 and shape[-1] in (None, 1) and matches((*example, 1)):
        return x[..., np.newaxis]
    shown = "(None, " + ", ".join("None" if s is None else str(s) for s in shape) + ")"
    raise DataError(
        f"The model takes inputs of shape {shown}, but the examples of {what} have shape {example} "
        f"({math.prod(example)} values), which cannot be reshaped to it unambiguously; give data of the model's "
        "input shape."
    )


def arrays_dataset(name, source, x_train, y_train, x_test=None, y_test=None):
    """A `bench.data.Dataset` of arrays of one's own, with their checksums, for the manifest and the resume check."""
    from vgbench.bench import data as data_mod

    x_train, y_train = np.asarray(x_train), np.asarray(y_train)
    x_test = np.asarray(x_test) if x_test is not None else x_train[:0]
    y_test = np.asarray(y_test) if y_test is not None else y_train[:0]
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, a in arrays.items():
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise DataError(f"{key} of {source} must be a numeric array. Received: dtype {a.dtype}")
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise DataError(
                f"{source} has {len(arrays[f'x_{split}'])} x_{split} examples but {len(arrays[f'y_{split}'])} "
                f"y_{split} labels; expected equal counts"
            )
    if len(x_train) == 0:
        raise DataError(f"x_train of {source} is empty; expected at least one example")
    data_mod.check_finite(arrays, str(source))
    checksums = {key: data_mod.array_checksum(a) for key, a in arrays.items()}
    num_classes = _num_classes(y_train, y_test)
    return data_mod.Dataset(
        name=name,
        num_classes=num_classes,
        source=str(source),
        checksums=checksums,
        checksum=data_mod.data_checksum(checksums),
        standard=False,
        **arrays,
    )


def _num_classes(*ys) -> int:
    ys = [y for y in ys if len(y)]
    if all(y.ndim >= 2 and y.shape[-1] > 1 for y in ys):
        return int(ys[0].shape[-1])  # one-hot
    if all(np.issubdtype(y.dtype, np.integer) for y in ys):
        return int(max(int(y.max()) for y in ys)) + 1
    return 0  # regression targets: no classes


def read_npz(path):
    """The arrays of an .npz of one's own (``x_train, y_train, x_test, y_test``) as a `bench.data.Dataset`.

    Raises:
        DataError: missing file or keys, not an .npz, or non-numeric arrays.
    """
    import zipfile
    import zlib

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Data file {str(path)!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(
                    f"{path} is missing {', '.join(missing)}; an .npz needs x_train, y_train, x_test, y_test"
                )
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, AttributeError) as e:
        raise DataError(f"Cannot read {path} as an .npz of x_train, y_train, x_test, y_test ({one_line(e)})") from None
    return arrays_dataset(f"{NPZ_DATASET}:{path.name}", path.absolute(), **arrays)


def prepare_arrays(ds, preprocessing: str, train_samples=None, test_samples=None):
    """(x_train, y_train, x_test, y_test) of a dataset: its first N examples after ``preprocessing``.

    ``scale`` and ``standardize`` are `bench.data.prepare`'s, so the inputs
    are those of `vgbench run`; ``none`` keeps the stored values (as float32
    when they are integers). Labels keep their stored values and shape;
    ``x_test`` and ``y_test`` are None for a dataset without test examples.

    Raises:
        UsageError: an unknown preprocessing or sample count.
    """
    from vgbench.bench import data as data_mod

    if preprocessing not in PREPROCESSINGS:
        raise UsageError(
            f"Argument `preprocessing` must be one of {', '.join(PREPROCESSINGS)}. "
            f"Received: preprocessing={shorten(repr(preprocessing))}"
        )
    n_train, n_test = data_mod.check_samples(ds, train_samples, test_samples)
    y_train, y_test = ds.y_train[:n_train], ds.y_test[:n_test]
    if preprocessing == "none":

        def raw(x):
            return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)

        x_train, x_test = raw(ds.x_train[:n_train]), raw(ds.x_test[:n_test])
    else:
        a = data_mod.prepare(
            ds, preprocessing=preprocessing, flatten=False, train_samples=n_train, test_samples=n_test or None
        )
        x_train, x_test = a.x_train, a.x_test[:n_test]
    if n_test == 0:
        return x_train, y_train, None, None
    return x_train, y_train, x_test, y_test


def load_model(path):
    """A saved Keras model with its compile config (`keras.saving.load_model`).

    Raises:
        UsageError: the file is missing or is not a Keras model that loads
            here (e.g. custom layers not registered: load it in Python with
            ``custom_objects`` and call `diagnose`).
    """
    from vgbench.bench.train import configure_tensorflow

    configure_tensorflow()
    import warnings

    import keras

    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"Model file {shorten(repr(str(path)), 200)} does not exist.")
    _check_archive(path)
    try:
        with warnings.catch_warnings():
            # Keras warns about optimizer variables it skips: the optimizer restarts anyway.
            warnings.simplefilter("ignore")
            model = keras.saving.load_model(path)
    except Exception as e:  # Keras raises many types for a file that is not a model it can build
        raise UsageError(
            f"Cannot load {shorten(repr(str(path)), 200)} as a Keras model ({one_line(e)}); a model with custom "
            "objects: load it in Python and call bench.diagnose.diagnose."
        ) from None
    if not isinstance(model, keras.Model):
        raise UsageError(f"{shorten(repr(str(path)), 200)} holds a {type(model).__name__}, not a Keras model.")
    return model


def _diagnosed(results, model_file=None):
    """(the diagnosed runs of ``results``, of ``model_file`` when given; the row of the run to tell of)."""
    runs = results.runs[results.runs["arch"] == ARCH] if "arch" in results.runs.columns else results.runs
    if model_file is not None and "model_sha256" in runs.columns:
        runs = runs[runs["model_sha256"] == file_sha256(model_file)]
    return runs, runs.sort_values("run_id").iloc[-1]


def failure(results, model_file=None) -> str | None:
    """The first line of the error of a diagnosis that failed (status ``failed``), else None.

    A diverged run is a result, not a failure.
    """
    _, row = _diagnosed(results, model_file)
    if row.get("status") != "failed":
        return None
    error = row.get("error")
    return error.strip().splitlines()[0] if isinstance(error, str) and error.strip() else "failed"


def _check_archive(path: Path) -> None:
    """Refuses an empty file, or a .keras that is not a whole zip archive, before Keras calls it "not found"."""
    import zipfile

    shown = shorten(repr(str(path)), 200)
    again = "save the model again with model.save('MODEL.keras')"
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"Cannot load {shown} as a Keras model: the file is empty (0 bytes); {again}.")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise UsageError(
            f"Cannot load {shown} as a Keras model: the file ({size:,} bytes) is not a complete .keras zip archive "
            f"(truncated, damaged or of another format); {again}."
        )


def summary_lines(results, model_file=None) -> list[str]:
    """What `vgbench diagnose` prints: the run, its outcome, the flags in words, where the report is."""
    from vgbench.bench import metrics

    runs, row = _diagnosed(results, model_file)
    m = metrics.run_metrics(runs[runs["run_id"] == row["run_id"]], results.layers).iloc[0]
    lines = [
        f"{row['model']}: run {row['run_id']}, {row['status']}, {int(row['steps'])} steps"
        + (f" ({row['error']})" if row.get("error") else "")
    ]
    history = results.history[results.history["run_id"] == row["run_id"]].sort_values("step")
    if len(history) and np.isfinite(history["test_accuracy"]).any():
        acc = history.dropna(subset=["test_accuracy"])
        lines.append(
            f"test accuracy {acc['test_accuracy'].iloc[0]:.1%} at step 0, {acc['test_accuracy'].iloc[-1]:.1%} "
            f"at step {int(acc['step'].iloc[-1])}"
        )
    flags = metrics.flags(m)
    when = {"init": "at step 0: ", "final": "at the end: "}
    lines.append("flags: " + ("; ".join(when.get(f.when, "") + f.describe() for f in flags) if flags else "none"))
    if results.path is not None:
        index = Path(results.path) / "report" / "index.html"
        lines.append(f"results in {results.path}" + (f"; report: {index}" if index.is_file() else ""))
    return lines


# --------------------------------------------------------------------------- #
# The diagnosis
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _Settings:
    steps: int
    batch_size: int
    log_every: int
    act_every: int
    seed: int


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a non-negative integer" if minimum == 0 else "a positive integer"
        raise UsageError(f"Argument `{name}` must be {kind}. Received: {name}={shorten(repr(value))}")
    return int(value)


def schedule(steps: int) -> tuple[int, int]:
    """(evaluation periods, steps per period) of ``steps`` optimizer steps: exactly ``steps`` in all."""
    if steps == 0:
        return 0, 0
    epochs = max(e for e in range(1, min(MAX_EVALUATIONS, steps) + 1) if steps % e == 0)
    return epochs, steps // epochs


def weights_sha256(model) -> str:
    """The sha256 of a model's weights (their values, in order)."""
    h = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(np.asarray(w))
        h.update(f"{w.path}:{value.dtype}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def diagnose(
    model,
    x_train,
    y_train,
    x_test=None,
    y_test=None,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    log_every: int | None = None,
    act_every: int | None = None,
    seed: int | None = None,
    loss=None,
    optimizer: str | None = None,
    learning_rate: float | None = None,
    out=None,
    tensorboard_dir=None,
    report: bool = True,
    wait: bool = False,
    dataset=None,
    preprocessing: str = "none",
    model_file=None,
):
    """Measures a Keras model's per-layer gradients and signals at its current weights and over training.

    The model is measured at step 0 on the first ``batch_size`` training
    examples, before any update, then trained for ``steps`` optimizer steps
    (in place: pass a copy to keep the original) with the per-layer
    quantities recorded as in `vgbench run`. It is compiled again first with
    a fresh copy of its optimizer (`compile_for_diagnosis`).

    Args:
        model: a Keras 3 model: Sequential, functional or subclassed (built,
            or buildable by calling it on ``x_train``).
        x_train: training inputs, as the model takes them (a single-input
            model's examples are reshaped to its input shape where that is
            unambiguous, see `fit_inputs`).
        y_train: training targets, as the model's loss takes them.
        x_test: optional test inputs, evaluated at step 0 and at the end of
            each evaluation period.
        y_test: their targets.
        steps: optimizer steps; 0 measures at the current weights only
            (default: the ``default`` suite's ``max_steps``).
        batch_size: examples per step and in the step-0 batch (default:
            the ``default`` suite's).
        log_every: record gradient norms and signals every this many steps.
        act_every: record activation statistics every this many steps.
        seed: seed of the data order and of Keras' random ops.
        loss: a loss spec (`get_loss`) instead of the model's own.
        optimizer: an optimizer name (`OPTIMIZERS`) instead of the model's own.
        learning_rate: a learning rate instead of the optimizer's own.
        out: a results directory to write (created, or one of vgbench's;
            the run is added to the runs already there, replacing an
            earlier diagnosis of the same run_id). None: nothing is written.
        tensorboard_dir: also write TensorBoard events into
            ``tensorboard_dir/RUN_ID``.
        report: with ``out``, build the report into ``out/report``.
        wait: when another process writes ``out``, wait for it.
        dataset: a `bench.data.Dataset` the arrays come from (for the
            manifest; `run_cli` passes it), or None for arrays of one's own.
        preprocessing: how the arrays were prepared, for the run's config.
        model_file: the file the model was loaded from (its sha256 goes into
            the run's config and the manifest).

    Returns:
        `bench.results.Results` holding the one run (read back from ``out``
        when given, so it holds every run there).

    Raises:
        UsageError: bad settings, no loss, data that does not fit the model
            or its loss, ``out`` unusable or locked by another process.
    """
    from vgbench.bench.train import configure_tensorflow

    configure_tensorflow()
    import keras

    settings_defaults = defaults()

    def pick(value, key):
        return settings_defaults[key] if value is None else value

    settings = _Settings(
        steps=_check_int("steps", pick(steps, "max_steps"), 0),
        batch_size=_check_int("batch_size", pick(batch_size, "batch_size"), 1),
        log_every=_check_int("log_every", pick(log_every, "log_every"), 1),
        act_every=_check_int("act_every", pick(act_every, "act_every"), 1),
        seed=_check_int("seed", pick(seed, "seed"), 0),
    )
    if not isinstance(model, keras.Model):
        raise UsageError(f"Argument `model` must be a Keras model. Received: model of type {type(model).__name__}")
    if (x_test is None) != (y_test is None):
        raise UsageError("Arguments `x_test` and `y_test` go together: give both or neither.")
    shape = model_input_shape(model)
    x_train = fit_inputs(x_train, shape, "x_train")
    if x_test is not None:
        x_test = fit_inputs(x_test, shape, "x_test")
    if dataset is None:
        dataset = arrays_dataset(ARRAYS_DATASET, "arrays given in Python", x_train, y_train, x_test, y_test)
    compiled = compile_for_diagnosis(model, loss=loss, optimizer=optimizer, learning_rate=learning_rate)
    n = min(settings.batch_size, len(x_train))
    probe = (x_train[:n], y_train[:n])
    _check_model_on(model, probe)
    _check_trainable(model)
    _check_fits(model, settings, x_train)

    model_info = {
        "name": model.name,
        "class": type(model).__name__,
        "file": str(Path(model_file).absolute()) if model_file is not None else "",
        "sha256": file_sha256(model_file) if model_file is not None else "",
        "weights_sha256": weights_sha256(model),
        "parameters": int(model.count_params()),
    }
    config = {
        "arch": ARCH,
        "model": model.name,
        "model_class": model_info["class"],
        "model_sha256": model_info["sha256"],
        "weights_sha256": model_info["weights_sha256"],
        "weights": model_info["weights_sha256"][:12],
        "activation": NOT_APPLICABLE,
        "initializer": NOT_APPLICABLE,
        "fix": "none",
        **compiled,
        "batch_size": settings.batch_size,
        "epochs": max(1, schedule(settings.steps)[0]),
        "max_steps": settings.steps,
        "dataset": dataset.name,
        "preprocessing": preprocessing,
        "train_samples": int(len(x_train)),
        "test_samples": int(len(x_test)) if x_test is not None else 0,
        "seed": settings.seed,
        "log_every": settings.log_every,
        "act_every": settings.act_every,
        "backend": backend_mod.loaded() or backend_mod.default_backend(),
    }
    # Without the late fields at their default: a TensorFlow diagnosis keeps its earlier run_id.
    digest = hashlib.sha256(json.dumps(stable_identity(config), sort_keys=True, default=str).encode()).hexdigest()[:10]
    run_id = f"{ARCH}-{slug(model.name) or 'model'}-{digest}"

    def measure():
        record = _train(model, settings, run_id, x_train, y_train, x_test, y_test, tensorboard_dir)
        depth = int(record.layers["layer_index"].max()) if len(record.layers) else 0
        record.config = {**config, "depth": depth, "width": 0}
        record.result["data_checksum"] = dataset.checksum
        return record

    from vgbench.bench import results as results_mod
    from vgbench.bench.runner import check_tensorboard_dir, open_results

    tensorboard_dir = check_tensorboard_dir(tensorboard_dir)
    if out is None:
        return _in_memory(measure(), dataset, model_info)
    extra = {"model": model_info}
    with open_results(out, {dataset.name: dataset}, suite=SUITE, wait=wait, manifest_extra=extra) as path:
        record = measure()
        results_mod.write_run(path, record)
    if report:
        from vgbench.bench.report import build_report

        build_report(path)
    return results_mod.load_results(path)


def _check_model_on(model, probe):
    """Refuses, before anything is written, a model whose forward pass or loss fails on the data."""
    import tensorflow as tf

    x, y = probe
    try:
        y_pred = model(x, training=False)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=False)
        value = float(tf.reduce_sum(loss))
    except Exception as e:  # any error here is a mismatch between the model, its loss and the data
        raise UsageError(
            f"Model {model.name!r} cannot compute its loss on these data ({one_line(e)}); check the loss, "
            "the data's shape and the label format."
        ) from None
    del value


def _check_trainable(model):
    """Refuses a model without trainable weights: it has no gradient to measure."""
    if model.trainable_weights:
        return
    if model.weights:
        why = f"all of its {len(model.weights)} weights are frozen (trainable=False)"
    else:
        why = "it has no weights"
    raise UsageError(
        f"Model {model.name!r} has no trainable weights ({why}); a diagnosis measures the gradients of "
        "trainable weights."
    )


def _check_fits(model, settings, x_train):
    """Refuses, like `vgbench run` does (`bench.sizing`), a diagnosis whose estimated memory exceeds this machine's.

    The estimate: the weights with their gradients and optimizer slots; one
    batch of inputs and of every layer's outputs, for the backward pass; the
    per-layer buffers the instrumentation holds for one evaluation period
    (a row per recorded step); the training inputs.
    """
    from vgbench.bench import sizing
    from vgbench.bench.quantities import LAYER_QUANTITIES

    floats = int(math.prod(x_train.shape[1:]))
    for layer in model.layers:
        try:
            floats += int(math.prod(d or 1 for d in layer.output.shape[1:]))
        except (AttributeError, ValueError, TypeError):  # a subclassed model's layers have no symbolic output
            pass
    layers = max(1, sum(1 for layer in model.layers if layer.weights))
    per_period = schedule(settings.steps)[1]
    rows = math.ceil(per_period / settings.log_every) + math.ceil(per_period / settings.act_every) + 2
    need = (
        sizing.BASE_BYTES
        + 4 * int(model.count_params()) * 5
        + 4 * 4 * settings.batch_size * floats
        + 4 * rows * layers * len(LAYER_QUANTITIES)
        + int(x_train.nbytes)
    )
    limit = sizing.machine_memory()
    if need > limit:
        raise UsageError(
            f"Diagnosis of {model.name!r} (steps={settings.steps}, batch_size={settings.batch_size}) needs an "
            f"estimated {need / sizing.GIB:,.1f} GiB of memory, more than this machine's {limit / sizing.GIB:,.1f} "
            "GiB; use a smaller --batch-size or --steps (or a larger --log-every and --act-every)."
        )


def _train(model, settings, run_id, x_train, y_train, x_test, y_test, tensorboard_dir):
    """The run: step 0, then ``settings.steps`` updates; `vgbench run`'s logged run, so a failure is a failed run."""
    from vgbench.bench.train import logged_run

    started = time.perf_counter()
    epochs, per_epoch = schedule(settings.steps)
    arrays = (x_train, y_train, x_test, y_test)
    return logged_run(
        run_id, {}, lambda: model, arrays, settings, epochs=epochs, per_epoch=per_epoch,
        tensorboard_dir=tensorboard_dir, started=started,
    )  # fmt: skip


def _in_memory(record, dataset, model_info):
    """`Results` of one run that was not written anywhere (``path`` None), with the tables' columns."""
    import pandas as pd

    from vgbench.bench import data as data_mod
    from vgbench.bench import results as results_mod

    def table(df, columns):
        df = df.copy()
        for c in columns:
            if c not in df.columns:
                df[c] = np.nan
        return df[columns + [c for c in df.columns if c not in columns]]

    result = {k: v for k, v in record.result.items() if k != "traceback"}
    runs = pd.DataFrame([{"run_id": record.run_id, **record.config, **result}])
    manifest = {
        "schema_version": results_mod.SCHEMA_VERSION,
        "suite": SUITE,
        "data": data_mod.describe(dataset),
        "model": model_info,
    }
    return results_mod.Results(
        None,
        manifest,
        runs,
        table(record.layers, results_mod.LAYER_COLUMNS),
        table(record.history, results_mod.HISTORY_COLUMNS),
        table(record.variables, results_mod.VARIABLE_COLUMNS),
    )
