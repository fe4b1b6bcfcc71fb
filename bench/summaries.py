"""TensorBoard event files from the logger's tables: per-layer scalars and gradient histograms.

`EventWriter` writes the event-file format that TensorBoard reads (one
directory per run), with the `tensorboard` package's own writer and
protocol buffers, without TensorFlow ops: the values are already numbers in
Python when the logger's buffers are flushed, so exporting them costs no
training step anything.

Scalars use the classic ``simple_value`` form, which every TensorBoard
version shows in its Scalars tab (and `EventAccumulator.Scalars` reads);
histograms the classic ``HistogramProto``, shown in the Histograms and
Distributions tabs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

__all__ = ["EventWriter", "HISTOGRAM_EDGES", "HISTOGRAM_FLOOR", "LayerEvents"]

# Gradient histograms are of log10|g| in fixed bins of a quarter decade from
# 1e-13 to 1e2: fixed so that the compiled step needs no data-dependent range
# and steps and layers are comparable. Values outside go to the end bins
# (exact zeros, and anything below 1e-13, to the first).
HISTOGRAM_EDGES = np.linspace(-13.0, 2.0, 61)
HISTOGRAM_FLOOR = 1e-30


class EventWriter:
    """Appends scalars and histograms to one TensorBoard run directory.

    Args:
        logdir: the run's directory (created); TensorBoard shows it as a run
            named by its path under the directory it is pointed at.
    """

    def __init__(self, logdir):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.logdir))

    def scalars(self, step: int, values: dict) -> None:
        """Writes ``{tag: value}`` at ``step``; NaN values (not measured) are left out."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        items = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items() if not math.isnan(float(v))]
        if items:
            self._add(step, Summary(value=items))

    def histograms(self, step: int, counts: dict, edges=HISTOGRAM_EDGES) -> None:
        """Writes ``{tag: counts}`` at ``step``: counts per bin of ``edges`` (len(edges) - 1 bins).

        The event needs min, max, sum and sum of squares of the values, which
        a fixed-bin histogram does not keep: they are taken from the edges
        and centres of the non-empty bins.
        """
        from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary

        edges = np.asarray(edges, dtype="float64")
        centres = (edges[:-1] + edges[1:]) / 2
        items = []
        for tag, c in counts.items():
            c = np.asarray(c, dtype="float64")
            if not np.isfinite(c).all() or c.sum() <= 0:
                continue
            nonzero = np.flatnonzero(c)
            histo = HistogramProto(
                min=float(edges[nonzero[0]]),
                max=float(edges[nonzero[-1] + 1]),
                num=float(c.sum()),
                sum=float((c * centres).sum()),
                sum_squares=float((c * centres**2).sum()),
                bucket_limit=[float(e) for e in edges[1:]],
                bucket=[float(x) for x in c],
            )
            items.append(Summary.Value(tag=tag, histo=histo))
        if items:
            self._add(step, Summary(value=items))

    def _add(self, step, summary):
        from tensorboard.compat.proto.event_pb2 import Event

        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class LayerEvents:
    """The logger's TensorBoard run: per-layer scalars and gradient histograms, from the records of each step.

    Args:
        tensorboard_dir: the directory TensorBoard is pointed at; the events
            go into its subdirectory named by the run (``run`` when
            ``run_id`` is empty).
        run_id: the run's id.
        layer_names: the name of each unit, in the records' row order.
        grad_fields, act_fields: the quantities of the records' columns
            (gradient cadence, activation cadence).
    """

    def __init__(self, tensorboard_dir, run_id, layer_names, grad_fields, act_fields):
        from vgbench.bench.results import run_dir_name

        self.layer_names = list(layer_names)
        self.grad_fields = tuple(grad_fields)
        self.act_fields = tuple(act_fields)
        self.writer = EventWriter(Path(tensorboard_dir) / (run_dir_name(run_id) if run_id else "run"))

    def record(self, step, grad=None, act=None, hist=None) -> None:
        """Writes one step's records: scalars ``QUANTITY/LAYER_NAME``, histograms ``grad_log10/LAYER_NAME``.

        ``grad``, ``act``: (layers, fields) arrays, or None where not
        measured at this step (as NaN values, they are left out).
        """
        scalars = {}
        for i, layer in enumerate(self.layer_names):
            for fields, values in ((self.grad_fields, grad), (self.act_fields, act)):
                if values is not None:
                    for name, value in zip(fields, values[i], strict=True):
                        scalars[f"{name}/{layer}"] = value
        self.writer.scalars(step, scalars)
        if hist is not None:
            self.writer.histograms(step, {f"grad_log10/{layer}": hist[i] for i, layer in enumerate(self.layer_names)})

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
