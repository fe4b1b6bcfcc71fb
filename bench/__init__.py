"""vgbench: measure the vanishing gradient problem in deep Keras networks.

Data flows one way: suite → `RunConfig` (bench.config) → model factory
(`models`) → training with instrumentation (bench.train,
bench.instrumentation) → results on disk (bench.results) → report
(bench.report) and regression comparison (bench.compare).
"""

import os as _os

# TensorFlow's C++ start-up chatter would drown the one-line messages of the
# CLI. oneDNN's CPU kernels also change float rounding with the processor
# they run on; the portable kernels keep results comparable across machines
# (set TF_ENABLE_ONEDNN_OPTS=1 to use them anyway).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
