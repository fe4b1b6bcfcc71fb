"""Fixtures shared by the whole test suite, and its two tiers.

Tiers (docs/testing.md): a plain ``pytest`` (hence ``make test``) runs the fast
tier, every test not marked ``slow``; ``pytest -m slow`` (``make test-slow``)
runs the slow tier, and ``pytest -m ""`` runs both. A test is slow when it
takes over ~2 s on 2 cores: mark it ``@pytest.mark.slow``, or name it (or its
file) in ``SLOW`` below, which keeps test files free of tier bookkeeping. The
summary at the end of a fast run lists the fast tests that took longer.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Before any test module imports Keras: the environment TensorFlow reads when it starts.
import vgbench  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist.npz"
TEST_DATA = Path(__file__).resolve().parent / "data"

# The slow tier: node ids relative to the repository root (a whole file, a test with all its
# parameters, or one parameter set), each with why it is slow (docs/testing.md has the durations).
_REPORT = "tests/bench/test_report.py::"
_CLI_RUN = "tests/bench/test_cli_run.py::"
_DIAGNOSE = "tests/bench/test_diagnose.py::"
_INSTR = "tests/bench/test_instrumentation.py::"
_ANY = "tests/bench/test_any_model.py::"
SLOW: dict[str, str] = {
    # Whole files.
    "tests/bench/test_reliability.py": "every test starts real `vgbench run` processes (~10 s of start-up each)",
    "tests/bench/test_ray.py": "a real local Ray instance per suite, and `vgbench` subprocesses",
    "tests/bench/test_instrumentation_jax.py": "one fixture trains every scenario on TensorFlow and in a JAX process",
    # The smoke suite through the CLI; the fast tier checks the same on the shared ci suite (tests/test_baseline.py).
    _CLI_RUN + "test_smoke_suite_writes_the_contract_tables": "the smoke suite, 2 worker processes (~50 s CPU)",
    _CLI_RUN + "test_second_invocation_does_no_work": "the smoke suite, and a second `vgbench run` process",
    _CLI_RUN + "test_killed_suite_resumes_and_matches_a_clean_run": "kills and resumes the smoke suite (~35 s CPU)",
    _CLI_RUN + "test_tensorboard_option_writes_each_runs_events_and_the_variables_table": "two runs and events (~9 s)",
    _CLI_RUN + "test_run_config_round_trip_and_stable_id": "a second Python process importing Keras (~8 s)",
    _DIAGNOSE + "test_saved_sequential_model_gives_the_tables_and_a_report": "trains, then builds a report (~20 s)",
    _DIAGNOSE + "test_readme_python_blocks_run_as_pasted": "runs the README's examples (~30 s in all)",
    _DIAGNOSE + "test_python_function_on_a_subclassed_model": "trains a subclassed model (~8 s)",
    "tests/bench/test_any_model.py::test_a_users_own_models_and_bench_modules_do_not_shadow_vgbench": "subprocess",
    "tests/bench/test_theory.py::test_theory_never_imports_tensorflow": "a second Python process (~3 s)",
    # Each builds a whole report of its own (~25 s each); the fast tier builds one (report_built).
    "tests/bench/test_theory_mnist.py": "real-MNIST step-0 measurements of depth-20, width-256 nets (~70 s in all)",
    "tests/bench/test_signals_mnist.py": "real-MNIST step-0 measurements of depth-20, width-256 nets (~15 s)",
    "tests/bench/test_validation.py::test_keras_imported_before_vgbench_warns_once": "a Python process (~50 s loaded)",
    "tests/bench/test_validation.py::test_large_grid_runs_with_yes_after_filtering": "trains its runs (~7 s)",
    "tests/bench/test_backend.py::test_the_logger_refuses_a_backend_it_cannot_record_on": "a Python process (~18 s)",
    "tests/bench/test_quantities.py::test_one_new_entry_reaches_instrumentation_results_metrics_and_compare": "trains",
    _DIAGNOSE + "test_functional_model_without_compile_config_needs_a_loss_and_steps_0_measures_only": "~5 s",
    # Instrumentation: the fast tier keeps the plain-GradientTape references of the MLP, and the
    # shared ci suite's comparison with reports/baseline; the other architectures and cadences are slow.
    _INSTR + "test_tables_follow_the_contract_and_cadence": "trains several cadences (~14 s)",
    _INSTR + "test_saturated_fraction_of_a_saturated_sigmoid_net": "~8 s",
    _INSTR + "test_callback_is_reusable_and_restores_the_model": "~7 s",
    _INSTR + "test_several_steps_per_execution_record_every_step": "~5 s",
    _INSTR + "test_logged_norms_match_plain_gradient_tape[mlp-batchnorm]": "~7 s",
    _INSTR + "test_logged_norms_match_plain_gradient_tape[cnn]": "~4 s",
    _INSTR + "test_logged_norms_match_plain_gradient_tape[cnn-batchnorm]": "~5 s",
    _INSTR + "test_backward_and_forward_signals_match_plain_gradient_tape[mlp-batchnorm]": "~7 s",
    _INSTR + "test_backward_and_forward_signals_match_plain_gradient_tape[cnn]": "~5 s",
    # Own models: the fast tier keeps the layer-by-layer reference, functional skips, subclassing and the metric rules.
    _ANY + "test_models_from_the_factory_keep_their_blocks_and_list_norm_weights_under_them": "~6 s",
    _ANY + "test_tensorboard_events_hold_the_tables_numbers": "~5 s",
    _ANY + "test_embedding_and_lstm": "~5 s",
    _ANY + "test_one_hot_labels_with_categorical_crossentropy": "~4 s",
    _ANY + "test_user_defined_layers": "~4 s",
    _ANY + "test_multi_head_attention": "~4 s",
    _ANY + "test_a_shared_layer_counts_once_with_the_gradient_of_both_calls": "~4 s",
    _ANY + "test_separable_and_depthwise_convolutions": "~3 s",
    _REPORT + "test_missing_data_skips_figures_with_reasons": "two more reports, through the CLI",
    _REPORT + "test_no_interval_is_promised_or_drawn_with_one_seed": "a one-seed report",
    _REPORT + "test_the_claims_section_opens_the_report_with_every_claim_and_its_verdict": "the claims report",
    _REPORT + "test_the_report_states_the_verdicts_claims_evaluate_gives_on_the_same_tables": "the claims report",
    _REPORT + "test_the_winning_learning_rate_is_shown_per_configuration_where_the_protocol_is_declared": "claims",
    # Figures drawn one by one (~3-8 s each).
    _REPORT + "test_an_underflowed_gradient_is_the_most_vanishing_value": "draws its figures",
    _REPORT + "test_heatmaps_show_backward_and_forward_factors_with_predictions_and_say_why_a_cell_is_blank": "figure",
    _REPORT + "test_pair_heatmaps_fit_the_page_and_label_their_colour_bars": "draws the pair heatmaps",
    _REPORT + "test_theory_figure_with_crowded_points_keeps_its_layout_and_labels_the_disagreements_first": "figure",
}

# A fast test over this many seconds (setup, call and teardown) is named in the run's summary.
SLOW_SECONDS = 2.0

# A warning filter must name the class as Python imports it here, through the vgbench package:
# "bench.data.X" would import a second copy of bench/data.py from the checkout, whose X is
# another class, and the filter would silence nothing.
_SHADOW_FILTER = re.compile(r":(bench|models)\.")


def _tier_keys(nodeid: str) -> tuple[str, str, str]:
    """The keys that name a test in ``SLOW``: its file, the test (every parameter) and the test with its parameters."""
    test = nodeid.split("[", 1)[0]
    return test.split("::", 1)[0], test, nodeid


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Marks the tests named in ``SLOW`` as slow (before ``-m`` selects), and refuses shadowed warning filters."""
    files, matched = set(), set()
    for item in items:
        keys = _tier_keys(item.nodeid)
        files.add(keys[0])
        named = [key for key in keys if key in SLOW]
        if named:
            item.add_marker(pytest.mark.slow)
            matched.update(named)
        for mark in item.iter_markers("filterwarnings"):
            for arg in mark.args:
                if _SHADOW_FILTER.search(arg):
                    fixed = _SHADOW_FILTER.sub(r":vgbench.\1.", arg)
                    raise pytest.UsageError(
                        f"{item.nodeid}: filterwarnings({arg!r}) names a module outside the vgbench package; "
                        f"write {fixed!r}"
                    )
    # A renamed test would leave its entry behind and silently join the fast tier (judged on whole files only).
    if not any("::" in arg for arg in config.args):
        _stale.update(key for key in SLOW if key.split("::", 1)[0] in files and key not in matched)


_durations: dict[str, float] = {}
_slow_items: set[str] = set()
_stale: set[str] = set()


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_runtest_setup(item):
    if item.get_closest_marker("slow") is not None:
        _slow_items.add(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Names the fast-tier tests over ``SLOW_SECONDS`` (candidates for the slow tier), and stale ``SLOW`` entries."""
    if _stale:
        terminalreporter.section("tests/conftest.py SLOW names tests that were not collected")
        for key in sorted(_stale):
            terminalreporter.write_line(key)
    long = sorted(
        ((d, n) for n, d in _durations.items() if d > SLOW_SECONDS and n not in _slow_items),
        reverse=True,
    )
    if long:
        terminalreporter.section(f"fast-tier tests over {SLOW_SECONDS:.0f} s (mark slow, or make faster)")
        for d, n in long:
            terminalreporter.write_line(f"{d:7.1f}s {n}")


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    """Path of the real MNIST file: ``$VGBENCH_MNIST``, else ``../shared/data/mnist.npz``.

    Skipped when the file is missing, except on CI (``CI=true`` or ``CI=1``),
    where a missing file must fail rather than silently skip the real-data
    tests.
    """
    env = os.environ.get("VGBENCH_MNIST", "").strip()
    path = Path(env).expanduser() if env else DEFAULT_MNIST
    if not path.is_file():
        if os.environ.get("CI", "").strip().lower() in ("true", "1"):
            pytest.fail(f"real MNIST not found at {path}: CI must provide it (set VGBENCH_MNIST=/path/to/mnist.npz)")
        pytest.skip("real MNIST not found: set VGBENCH_MNIST=/path/to/mnist.npz (see README)")
    return path


@pytest.fixture(scope="session")
def ci_suite_results(mnist_path, tmp_path_factory) -> Path:
    """The fast tier's one real end-to-end suite: the ``ci`` suite on real MNIST, run once per session.

    Run as ``make ci-report`` runs it: ``vgbench run --suite ci --jobs 2`` on
    TensorFlow, the backend of reports/baseline, in a subprocess. Returns the
    results directory; tests read it and write their reports elsewhere
    (``report --out-dir``), and add no runs to it.
    """
    out = tmp_path_factory.mktemp("ci-suite") / "results"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"} | {"PYTHONUNBUFFERED": "1"}
    args = ["run", "--suite", "ci", "--backend", "tensorflow", "--data", str(mnist_path), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "vgbench", *args, "--jobs", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def measure_at_init():
    """A function training nothing, measuring step 0 of a depth-20, width-256 MLP on standardized MNIST.

    ``measure_at_init(data, activation, initializer, train_samples, seed=0)``
    returns ``(config, record, row)``: the `RunConfig` (batch 256), the run's
    record and its `metrics.run_metrics` row as a dict.
    """
    from vgbench.bench import metrics
    from vgbench.bench.config import RunConfig
    from vgbench.bench.train import train_run

    def measure(data, activation, initializer, train_samples, seed=0):
        config = RunConfig(
            depth=20,
            width=256,
            activation=activation,
            initializer=initializer,
            batch_size=256,
            max_steps=0,
            preprocessing="standardize",
            train_samples=train_samples,
            test_samples=256,
            seed=seed,
        )
        record = train_run(config, data=data)
        assert record.result["status"] == "ok", record.result.get("error")
        runs = record.layers[["run_id"]].drop_duplicates().assign(status="ok", depth=config.depth)
        return config, record, metrics.run_metrics(runs, record.layers).iloc[0].to_dict()

    return measure


def _load_make_results():
    spec = importlib.util.spec_from_file_location("vgbench_test_data", TEST_DATA / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_results():
    """The module tests/data/make_results.py: the configs and datasets of the committed results."""
    return _load_make_results()


@pytest.fixture(scope="session")
def committed_results(tmp_path_factory):
    """A function ``copy(name)``: a fresh copy of tests/data/results/NAME (a results set, or a folder of sets).

    Each call copies into its own temporary directory (as ``.../results``), so a
    test may write a report into it.
    """

    def copy(name: str) -> Path:
        src = TEST_DATA / "results" / name
        if not next(src.rglob("manifest.json"), None):  # a set, or a folder of sets
            pytest.fail(f"no committed results at {src}: run `.venv/bin/python tests/data/make_results.py`")
        dst = tmp_path_factory.mktemp(name.replace("/", "-")) / "results"
        shutil.copytree(src, dst)
        return dst

    return copy
