"""vgbench: measure the vanishing gradient problem in deep Keras networks.

Two subpackages: `vgbench.models` (Keras model factories and the registries
of activations and initializers) and `vgbench.bench` (training with
instrumentation, suites, results, theory, claims, reports, compare). Their
source lives in ``models/`` and ``bench/`` at the top of the repository.

Importing this package imports neither Keras nor TensorFlow; it only sets the
environment they read when they start (see below), so import it first.
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
        "TensorFlow was imported before vgbench, so its oneDNN kernels stay on and numbers may differ "
        "slightly from `vgbench run`; import vgbench before keras/tensorflow, or set TF_ENABLE_ONEDNN_OPTS=0 "
        "in the environment.",
        RuntimeWarning,
        stacklevel=2,
    )
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
