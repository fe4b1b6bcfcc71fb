"""One run: config → model → `model.fit` with instrumentation → `RunRecord`."""

from __future__ import annotations

import math
import os
import time
import traceback

from vgbench.bench.config import RunConfig
from vgbench.bench.provenance import run_provenance
from vgbench.bench.results import RunRecord, empty_result
from vgbench.bench.utils import one_line

_configured = False

# Where `train_run` writes TensorBoard event files when not told: set by
# `run_suite(tensorboard_dir=...)` so that every executor's runs see it.
TENSORBOARD_ENV = "VGBENCH_TENSORBOARD"


def configure_tensorflow(threads: int | None = None) -> None:
    """Deterministic ops and a fixed thread budget, once per process.

    Must run before TensorFlow executes its first op. Worker processes get
    ``threads`` intra-op threads each, so parallel workers don't
    oversubscribe the cores.
    """
    global _configured
    if _configured:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, threads))
        except RuntimeError:
            pass  # already initialized: keep its settings
    tf.config.experimental.enable_op_determinism()
    _configured = True


def build(config: RunConfig, input_shape):
    """The compiled Keras model of a config (the model factory + training recipe)."""
    import keras

    from vgbench import models

    model = models.build_model(input_shape=input_shape, **config.model_kwargs())
    clip = config.fixes.get("clipnorm")
    kw = {"learning_rate": config.learning_rate}
    if clip:
        kw["clipnorm"] = float(clip)
    if config.optimizer == "sgd":
        opt = keras.optimizers.SGD(**kw)
    elif config.optimizer == "momentum":
        opt = keras.optimizers.SGD(momentum=0.9, **kw)
    else:
        opt = keras.optimizers.Adam(**kw)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    return model


def schedule(config: RunConfig, n_train: int) -> tuple[int, int]:
    """(epochs, steps per epoch) of a run; see `RunConfig` for ``max_steps``."""
    per_epoch = math.ceil(n_train / config.batch_size)
    if config.max_steps is None:
        return config.epochs, per_epoch
    if config.max_steps == 0:
        return 0, 0
    epochs = min(config.epochs, config.max_steps)
    return epochs, math.ceil(config.max_steps / epochs)


def fit_logged(model, logger, x_train, y_train, test_ds, *, epochs, per_epoch, batch_size, seed, callbacks=()):
    """Trains `model` with `logger` (only measures at initialization when ``epochs == 0``).

    Returns:
        The outcome fields the logger gives: ``steps``, the last history
        row's losses and accuracies, and ``status``/``diverged_step`` when
        the run diverged.
    """
    from vgbench.bench import data as data_mod

    if epochs == 0:
        # Initialization only: the step-0 measurement, no update.
        measure_at_init(model, logger)
    else:
        train_ds = data_mod.make_tf_dataset(x_train, y_train, batch_size=batch_size, seed=seed).repeat()
        model.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=per_epoch,
            validation_data=test_ds,
            callbacks=[logger, *callbacks],
            shuffle=False,  # the tf.data pipeline shuffles, with the run's seed
            verbose=0,
        )
    out = {"steps": int(model.optimizer.iterations.numpy())}
    hist = logger.history
    if len(hist):
        last = hist.iloc[-1]
        for k in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
            out[k] = float(last[k])
    if logger.diverged_step is not None:
        out["status"] = "diverged"
        out["diverged_step"] = int(logger.diverged_step)
    return out


# The last few prepared arrays of this process, by dataset checksum and preparation
# (a worker trains many runs on the same arrays; converting MNIST costs ~0.5 s).
_PREPARED: dict = {}
_PREPARED_KEEP = 2


def prepared_data(config: RunConfig, data=None, data_path=None):
    """``(dataset, arrays)``: the config's dataset (``data``, else read) and its preprocessed train/test arrays.

    The arrays are read-only and shared by the runs of this process that
    prepare the same data the same way.
    """
    from vgbench.bench import data as data_mod

    if data is None:
        data = data_mod.load_dataset(config.dataset, data_path)
    kwargs = dict(
        preprocessing=config.preprocessing,
        flatten=config.arch == "mlp",
        train_samples=config.train_samples,
        test_samples=config.test_samples,
    )
    key = (data.name, data.checksum, *kwargs.values())
    arrays = _PREPARED.pop(key, None)
    if arrays is None:
        arrays = data_mod.prepare(data, **kwargs)
        for a in (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test):
            a.flags.writeable = False
    _PREPARED[key] = arrays  # the most recently used last
    while len(_PREPARED) > _PREPARED_KEEP:
        _PREPARED.pop(next(iter(_PREPARED)))
    return data, arrays


def train_run(config: RunConfig, data=None, data_path=None, callbacks=(), tensorboard_dir=None) -> RunRecord:
    """Trains one config and returns its results; failures become a record too.

    Args:
        config: the run.
        data: optional `bench.data.Dataset` already loaded (saves reloading
            in a worker that runs many configs on one dataset).
        data_path: where to read the dataset when ``data`` is None.
        callbacks: more Keras callbacks for `fit` (e.g. progress reporting).
        tensorboard_dir: write the run's per-layer quantities and gradient
            histograms as TensorBoard events into ``tensorboard_dir/RUN_ID``
            (default: ``$VGBENCH_TENSORBOARD``, unset: none).

    Returns:
        A `RunRecord`. A non-finite loss or gradient gives status
        ``"diverged"``; an exception inside training gives ``"failed"`` with
        its message (the suite goes on).
    """
    configure_tensorflow()

    t0 = time.perf_counter()
    data, arrays = prepared_data(config, data, data_path)
    epochs, per_epoch = schedule(config, len(arrays.x_train))
    return logged_run(
        config.run_id,
        config.to_dict(),
        lambda: build(config, arrays.x_train.shape[1:]),
        (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test),
        config,
        epochs=epochs,
        per_epoch=per_epoch,
        callbacks=callbacks,
        tensorboard_dir=tensorboard_dir or os.environ.get(TENSORBOARD_ENV) or None,
        result=empty_result(data_checksum=data.checksum, **run_provenance()),
        started=t0,
    )


def logged_run(
    run_id: str,
    config: dict,
    make_model,
    arrays,
    settings,
    *,
    epochs: int,
    per_epoch: int,
    callbacks=(),
    tensorboard_dir=None,
    result: dict | None = None,
    started: float | None = None,
) -> RunRecord:
    """One instrumented training, `vgbench run`'s and `vgbench diagnose`'s alike; a failure is a record too.

    Seeds Keras with ``settings.seed``, then measures step 0 and trains
    ``epochs`` × ``per_epoch`` steps with a `GradientNormLogger`
    (`fit_logged`), probing the gradient on the first ``batch_size``
    training examples.

    Args:
        run_id: the run's id, in its tables and TensorBoard folder.
        config: the run's config fields, as recorded.
        make_model: returns the compiled Keras model; called after seeding,
            so that a model that cannot be built is a failed run.
        arrays: ``(x_train, y_train, x_test, y_test)``; the test arrays may be
            None or empty (no test metrics then).
        settings: the run's ``batch_size``, ``seed``, ``log_every`` and
            ``act_every`` (a `RunConfig`, or diagnose's settings).
        epochs, per_epoch: the schedule; ``0, 0`` measures step 0 only.
        callbacks: more Keras callbacks for `fit`.
        tensorboard_dir: where the logger writes TensorBoard events (None: nowhere).
        result: the record's outcome fields before training (default
            `empty_result` with the run's provenance).
        started: `time.perf_counter()` when the run began, for its wall time
            (default: now).

    Returns:
        A `RunRecord`: status ``"diverged"`` for a non-finite loss or
        gradient, ``"failed"`` with the exception's first line for an error
        in training, keeping what the logger recorded until then.
    """
    import keras
    import pandas as pd

    from vgbench.bench import data as data_mod
    from vgbench.bench.instrumentation import GradientNormLogger

    t0 = time.perf_counter() if started is None else started
    result = empty_result(**run_provenance()) if result is None else result
    x_train, y_train, x_test, y_test = arrays
    # One pipeline for the test set: the step-0 evaluation and fit's validation.
    test_ds = (
        data_mod.make_tf_dataset(x_test, y_test, batch_size=512, shuffle=False)
        if x_test is not None and len(x_test)
        else None
    )
    logger = jacobian = None
    try:
        keras.utils.set_random_seed(settings.seed)
        model = make_model()
        n = min(settings.batch_size, len(x_train))
        logger = GradientNormLogger(
            probe_data=(x_train[:n], y_train[:n]),
            test_data=test_ds,
            log_every=settings.log_every,
            act_every=settings.act_every,
            run_id=run_id,
            tensorboard_dir=tensorboard_dir,
        )
        jacobian_examples = getattr(settings, "jacobian_examples", 0)
        if jacobian_examples:
            # Before any update: the spectrum at initialization (`bench.spectrum`).
            from vgbench.bench import spectrum

            jacobian = spectrum.measure(model, x_train[:jacobian_examples], settings.depth, run_id)
            result.update(spectrum.run_summary(jacobian))
        result.update(
            fit_logged(
                model, logger, x_train, y_train, test_ds, epochs=epochs, per_epoch=per_epoch,
                batch_size=settings.batch_size, seed=settings.seed, callbacks=callbacks,
            )
        )  # fmt: skip
    except Exception as e:  # a failed run is a result, not the end of the suite
        result["status"] = "failed"
        result["error"] = one_line(e)[:500]
        result["traceback"] = traceback.format_exc()[-4000:]
        if logger is not None and logger.model is not None:
            try:
                logger.finalize()  # keep what was recorded before the failure
            except Exception:
                pass
    result["wall_time_s"] = time.perf_counter() - t0
    layers = logger.layers if logger is not None else pd.DataFrame()
    history = logger.history if logger is not None else pd.DataFrame()
    variables = logger.variables if logger is not None else pd.DataFrame()
    return RunRecord(run_id, config, result, layers, history, variables, jacobian)


def measure_at_init(model, logger):
    """Runs a `GradientNormLogger`'s step-0 measurement on `model` without any training step."""
    logger.set_model(model)
    logger.set_params({"epochs": 0, "steps": 1, "verbose": 0})
    logger.on_train_begin()
    logger.on_train_end()
