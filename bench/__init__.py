"""vgbench: measure the vanishing gradient problem in deep Keras networks.

Data flows one way: suite → `RunConfig` (bench.config) → model factory
(`models`) → training with instrumentation (bench.train,
bench.instrumentation) → results on disk (bench.results) → report
(bench.report) and regression comparison (bench.compare).
"""

import os as _os
import sys as _sys

# TensorFlow's C++ start-up chatter would drown the one-line messages of the
# CLI. oneDNN's CPU kernels also change float rounding with the processor
# they run on; the portable kernels keep results comparable across machines
# (set TF_ENABLE_ONEDNN_OPTS=1 to use them anyway).
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "TF_ENABLE_ONEDNN_OPTS" not in _os.environ and "tensorflow" in _sys.modules:
    # TensorFlow reads the variable when it starts: set now, it would only
    # pretend to apply, and this process would compute other numbers than
    # `vgbench run` with the same config.
    import warnings as _warnings

    _warnings.warn(
        "TensorFlow was imported before bench, so its oneDNN kernels stay on and numbers may differ "
        "slightly from `vgbench run`; import bench before keras/tensorflow, or set TF_ENABLE_ONEDNN_OPTS=0 "
        "in the environment.",
        RuntimeWarning,
        stacklevel=2,
    )
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
