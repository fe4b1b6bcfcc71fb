"""vgbench: measure the vanishing gradient problem in deep Keras networks.

Data flows one way: suite → `RunConfig` (bench.config) → model factory
(`models`) → training with instrumentation (bench.train,
bench.instrumentation) → results on disk (bench.results) → report
(bench.report) and regression comparison (bench.compare).
"""

from vgbench import __version__  # noqa: F401  (the package's version, also here)
