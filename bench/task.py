"""Trains one run config into a `RunRecord`: the unit of work that every executor runs.

config → dataset → `bench.train.train_run` → record. It runs wherever the
executor puts it (this process, a local worker process, a Ray worker) and
writes nothing: the driver records what it returns (`bench.results.write_run`).
"""

from __future__ import annotations

import socket
import warnings

from vgbench.bench import backend
from vgbench.bench.config import RunConfig
from vgbench.bench.errors import DataError

_DATA_CACHE: dict = {}


def load_data_cached(dataset: str, data_path):
    """The dataset, loaded once per process (a worker runs many configs on it)."""
    from vgbench.bench.data import load_dataset

    key = (dataset, str(data_path) if data_path else None)
    if key not in _DATA_CACHE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the driver already warned once
            _DATA_CACHE[key] = load_dataset(dataset, data_path)
    return _DATA_CACHE[key]


def run_task(config_dict: dict, data=None, data_path=None, checksum=None, on_step=None):
    """Trains one run and returns its `bench.results.RunRecord`.

    Args:
        config_dict: the run's `RunConfig` as a dict.
        data: the `bench.data.Dataset` the driver loaded, or None to load it
            here from ``data_path`` (else the usual sources).
        data_path: where to load the dataset when ``data`` is None.
        checksum: the driver's dataset checksum; data loaded here must match.
        on_step: optional ``on_step(run_id, step)`` called at each epoch end
            (progress display).

    Raises:
        DataError: data loaded here differs from the driver's.
        UsageError: Keras runs on another backend in this process than the
            run's (`bench.backend.select`).
    """
    from vgbench.bench.train import train_run

    config = RunConfig.from_dict(config_dict)
    # A worker started for this backend has it already; one whose Keras runs another is refused.
    backend.select(config.backend)
    if data is None:
        data = load_data_cached(config.dataset, data_path)
        if checksum is not None and data.checksum != checksum:
            raise DataError(
                f"Worker on {socket.gethostname()} read {config.dataset} from {data.source} with checksum "
                f"{data.checksum[:12]}, not the driver's {checksum[:12]}; give every worker the same file."
            )
    callbacks = [_step_callback(on_step, config.run_id)] if on_step is not None else []
    return train_run(config, data=data, callbacks=callbacks)


def _step_callback(on_step, run_id):
    """A Keras callback that reports the run's optimizer step at each epoch end."""
    import keras

    class StepReporter(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            try:
                on_step(run_id, int(self.model.optimizer.iterations.numpy()))
            except Exception:  # progress display must never break a run
                pass

    return StepReporter()
