"""`build_report`: results directory → statistics → figures → summary files.

The report is computed in one direction: `bench.report.tables` turns the
stored tables into long-form statistics, `bench.report.figures` draws them,
`bench.report.findings` draws conclusions from them, and
`bench.report.document` writes the same statistics and findings as
Markdown, JSON and a self-contained HTML page. A figure whose data is
missing returns `figures.Skipped` with its reason, which the summary lists;
it never stops the report.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from vgbench.bench import backend as backend_mod
from vgbench.bench import quantities as Q
from vgbench.bench.errors import UsageError
from vgbench.bench.report import document, figures, predictions, tables, text, verdicts
from vgbench.bench.results import load_results

logger = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")


@dataclass
class Tables:
    """Every statistic of one report, computed once from the stored results."""

    runs: pd.DataFrame  # run_metrics + flags (lists), one row per run
    pairs: pd.DataFrame  # ranked, one row per pair
    main: dict  # the fixed keys of the activation × initializer slice
    main_text: str  # the same, in words
    profiles: pd.DataFrame
    heatmap: pd.DataFrame
    grid: pd.DataFrame
    sweep: pd.DataFrame
    curves: pd.DataFrame
    activations: pd.DataFrame
    fixes: pd.DataFrame
    functions: pd.DataFrame
    chance: float
    predictions: predictions.Predictions | None = None
    theory: pd.DataFrame = field(default_factory=pd.DataFrame)  # predicted vs measured factors per pair
    claims: dict = field(default_factory=dict)  # `verdicts.claims_section`
    protocol: pd.DataFrame = field(default_factory=pd.DataFrame)  # `verdicts.protocol_table`
    palette: dict = field(default_factory=dict)  # activation → colour
    init_palette: dict = field(default_factory=dict)  # initializer → colour
    fix_palette: dict = field(default_factory=dict)  # fix → colour
    jacobian: pd.DataFrame = field(default_factory=pd.DataFrame)  # `bench.spectrum.spread_by_depth`


def _categorical_strings(layers: pd.DataFrame) -> pd.DataFrame:
    """The layers table with its string columns (run_id, layer_name) as categories.

    A make bench directory's layers table has millions of rows; the report
    filters and groups it by run hundreds of times, and taking rows of an
    Arrow-backed string column cost more than all the arithmetic (~40 s of
    a profiled make bench report). A category's codes are taken as
    integers; values, order and groups are those of the strings.
    """
    strings = [c for c in ("run_id", "layer_name") if c in layers.columns and pd.api.types.is_string_dtype(layers[c])]
    return layers.astype({c: "category" for c in strings}) if strings else layers


def compute_tables(results, load_data: bool = True) -> Tables:
    """All statistics of a report from a loaded `bench.results.Results`.

    Args:
        results: the loaded results.
        load_data: read the dataset the manifest names (when it is here) for
            the inputs' second moments of the predictions; False uses their
            means alone (see `bench.report.predictions`).
    """
    predicted = predictions.predict_runs(results.runs, results.manifest, load=load_data)
    layers = _categorical_strings(results.layers)
    runs_m = tables.run_table(results.runs, layers, predicted.runs)
    pairs = tables.pair_table(runs_m)
    main_runs, main = tables.main_slice(runs_m)
    slice_text = text.describe_slice(main, tables.varying_keys(runs_m))
    profiles = tables.gradient_profiles(main_runs, layers, predicted.layers)
    curves = tables.learning_curves(main_runs, results.history)
    activations = tables.activation_profiles(main_runs, layers)
    for t in (profiles, curves, activations):
        t.attrs.setdefault("slice", slice_text)
    # The claims read the same run table as every figure and finding of the report.
    section = verdicts.claims_section(runs_m, layers, results.history, results.manifest)
    return Tables(
        runs=runs_m,
        pairs=pairs,
        main=main,
        main_text=slice_text,
        profiles=profiles,
        heatmap=tables.heatmap_runs(pairs, layers, main),
        grid=tables.pair_grid(pairs, main),
        sweep=tables.depth_sweep(runs_m),
        curves=curves,
        activations=activations,
        fixes=tables.fix_effects(runs_m),
        functions=tables.activation_curves(results.runs["activation"].unique()),
        chance=tables.chance_accuracy(results.manifest),
        predictions=predicted,
        theory=tables.theory_points(pairs),
        claims=section,
        protocol=verdicts.protocol_table(runs_m, results.manifest),
        palette=figures.category_palette(results.runs["activation"]),
        init_palette=figures.category_palette(results.runs["initializer"], "Dark2"),
        fix_palette=figures.fix_palette(results.runs["fix"]),
        jacobian=_jacobian_profile(results),
    )


def _jacobian_profile(results) -> pd.DataFrame:
    """The Jacobian spectrum by depth (`bench.spectrum.spread_by_depth`); empty when no run measured it."""
    from vgbench.bench import spectrum

    table = getattr(results, "jacobian", None)
    if table is None or table.empty:
        return pd.DataFrame()
    return spectrum.spread_by_depth(table, results.runs)


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: its file stem, title, caption and how to draw it."""

    name: str
    title: str
    caption: str
    draw: object  # Callable[[], Figure | figures.Skipped]


# The panels of the three activation × initializer figures (one image each, legible at the page's width).
_GRID_PANELS = {
    "pair_heatmaps": ("backward_factor_init", "forward_factor_init"),
    "pair_gradients": ("grad_factor_init", "grad_ratio_init"),
    "pair_outcomes": ("test_accuracy", Q.DEAD_FRACTION, Q.SATURATED_FRACTION),
}

_BLANK_TEXT = (
    'A blank cell says why it has no value: failed or diverged runs, "all 0" where every hidden layer\'s '
    "gradient is exactly 0 (flagged vanishing; collapse at the end of a run that did not vanish at step 0), "
    '"underflow" where some are, n/a for a fraction that does not apply.'
)


def _mean_text(grid: pd.DataFrame) -> str:
    n = grid.attrs.get("max_seeds", 1)
    return "mean over seeds" if n >= 2 else "one seed each"


def _figure_specs(t: Tables) -> list[FigureSpec]:
    # Only where a run measured it (`jacobian_examples`): other reports do not list it as skipped.
    return _base_figure_specs(t) + ([_jacobian_spec(t)] if not t.jacobian.empty else [])


def _jacobian_spec(t: Tables) -> FigureSpec:
    n = int(t.jacobian.loc[t.jacobian["source"] == "measured", "n"].max())
    return FigureSpec(
        "jacobian_spectrum",
        "Jacobian spectrum by depth (dynamical isometry)",
        "Singular values s of J_l = ∂z_l/∂z_0, the Jacobian of hidden layer l's pre-activation with respect to "
        "the first hidden layer's, at initialization, computed exactly on a few training examples "
        "(`jacobian_examples`). Left: the spread Var(s²)/E[s²]², 0 for an isometry (every direction "
        "multiplied alike), drawn at 10⁻⁴ when it is 0; right: the mean of s², the mean-field χ^l. Solid: "
        f"measured, the median over runs and examples with their range as a band (up to {n} spectra per "
        "point); dashed: the free-probability prediction of large width (bench.spectrum): per layer the "
        "spread adds 1 for i.i.d. (Gaussian) weights and 0 for orthogonal ones, plus "
        "E[φ′⁴]/E[φ′²]² − 1 at that layer's q (1 for ReLU, → 0 for tanh as q → 0). A spread that grows "
        "linearly in l is no isometry: a few directions carry the signal and the rest are lost. Finite "
        "width adds corrections of order l/width.",
        lambda: figures.jacobian_spectrum(t.jacobian, t.palette),
    )


def _base_figure_specs(t: Tables) -> list[FigureSpec]:
    where = t.main_text
    chance = text.pct(t.chance)
    chance_loss = -math.log(t.chance)
    return [
        FigureSpec(
            "gradient_depth",
            "Gradient per weight by layer",
            "RMS gradient per weight (‖∂L/∂W‖/√|W|) of each hidden layer's kernel and bias against its index "
            f"(0 = next to the input), at step 0 and averaged over the last logged steps ({where}). Look for "
            "lines that fall towards layer 0: every decade of drop is ten times less gradient reaching the input "
            "side (vanishing); rising lines are exploding gradients; flat lines are healthy; a line that drops "
            f"off the bottom reaches a gradient that underflowed to exactly 0. {_interval_text(t.profiles)} "
            f"{_DIVERGED_TEXT} "
            "The last two rows, at step 0: the backward signal (RMS of B·∂L/∂z at each pre-activation) and the "
            "forward one (RMS of the pre-activation z), measured (solid) and as mean-field theory predicts them "
            "(dashed; the backward prediction times the measured RMS of the gradient with respect to the logits, "
            f"which the loss sets). {_inputs_text(t)} The kernel gradient δ ⊗ a multiplies the two: a backward "
            "line falling towards layer 0 while the forward line falls towards the output is a forward collapse "
            "that the kernel-gradient rows hide.",
            lambda: figures.gradient_depth(t.profiles, t.palette),
        ),
        FigureSpec(
            "theory_vs_measurement",
            "Theory vs measurement",
            "Per-layer factor of the backward signal (by how much it is multiplied per layer on its way to the "
            "input) and of the forward signal (per layer on its way to the output) at step 0: the mean-field "
            "prediction (x) against the measurement (y), one point per pair, log-log, labelled where a label fits "
            "(those farthest off the line first; the pair table below lists every value). On the solid identity line "
            f"they agree; the grey band is ×{predictions.TOLERANCE:g} either way, the tolerance of the findings. "
            "Below 1: vanishing (backward) or collapsing (forward); above 1: exploding. Points off the band are "
            "named in the findings with the likely reason (finite width, non-Gaussian inputs, underflow). "
            "The theory is of infinite width: one network of width W scatters around it, most where χ depends "
            "on q along a forward collapse (GELU + He at depth 20 on MNIST: a seed-to-seed SD of about 0.5/√W, "
            "and a mean 0.002-0.05 above the prediction at widths 64-2048; docs/isometry.md). "
            f"{_inputs_text(t)} Pairs the theory does not cover (normalization, residual or dropout fixes, CNNs) "
            "are left out, counted under the plot by reason and listed in summary.json. A red ✕ marks a pair "
            "with a diverged run (step 0 is measured before it diverged).",
            lambda: figures.theory_vs_measurement(t.theory, t.palette),
        ),
        FigureSpec(
            "gradient_heatmap",
            "Gradient per weight by layer and step",
            "log10 RMS kernel gradient per weight (‖∂L/∂W‖/√|W|) of every layer (rows, input side at the "
            "bottom) at every logged step (columns), for the best pair (highest accuracy) and the worst (most "
            "unequal gradient across layers) of the same setting "
            f"({t.heatmap.attrs.get('why') or t.heatmap.attrs.get('slice') or where}), on one colour scale. "
            "Dark rows near layer 0 that stay dark through training are layers that barely learn; a diverged "
            "run's panel says so in its title and stops at the step it diverged.",
            lambda: figures.gradient_heatmap(t.heatmap, t.palette),
        ),
        FigureSpec(
            "pair_heatmaps",
            "Activation × initializer: signals at step 0",
            f"Each activation × initializer pair ({t.grid.attrs.get('slice', where)}), {_mean_text(t.grid)}. "
            "Per-layer factor of the backward signal (towards the input) and of the forward signal (towards the "
            "output) at step 0, with the mean-field prediction in brackets: well under 1 is a vanishing backward "
            "or a collapsing forward signal, above 1 exploding. Colour: log10 of the factor (blue below ×1, red "
            f"above). {_BLANK_TEXT}",
            lambda: figures.pair_heatmaps(
                t.grid, t.palette, _GRID_PANELS["pair_heatmaps"], "Activation × initializer: signals at step 0"
            ),
        ),
        FigureSpec(
            "pair_gradients",
            "Activation × initializer: kernel gradient at step 0",
            f"Same pairs. The kernel-gradient factor multiplies the backward and forward signals and can look "
            "healthy (≈ 1) when both fail, as gelu or swish with Glorot init do. The log10 first/last ratio: "
            'the first hidden layer gets 10^value of the last one\'s gradient; "underflow" (exactly 0 in '
            f"float32) is coloured below every measured ratio. {_BLANK_TEXT}",
            lambda: figures.pair_heatmaps(
                t.grid, t.palette, _GRID_PANELS["pair_gradients"], "Activation × initializer: kernel gradient at step 0"
            ),
        ),
        FigureSpec(
            "pair_outcomes",
            "Activation × initializer: accuracy and units",
            f"Same pairs. Test accuracy near chance ({chance}) with a vanishing factor marks a vanishing pair; "
            f"dead or saturated fractions near 1 say why. {_BLANK_TEXT}",
            lambda: figures.pair_heatmaps(
                t.grid, t.palette, _GRID_PANELS["pair_outcomes"], "Activation × initializer: accuracy and units"
            ),
        ),
        FigureSpec(
            "depth_sweep",
            "Depth sweep",
            "Test accuracy and first/last gradient ratio at step 0 against depth. On the log axis a straight "
            "falling line is a constant per-layer factor: the gradient at the first layer shrinks exponentially "
            "with depth, and accuracy drops once it is too small to learn from. "
            f"{_interval_text(t.sweep, 'Error bars')} "
            f"{_DIVERGED_TEXT}",
            lambda: figures.depth_sweep(t.sweep, t.palette),
        ),
        FigureSpec(
            "learning_curves",
            "Learning curves",
            f"Loss and accuracy against step ({where}); colour is the initializer, solid test and dashed train. "
            f"A loss stuck near ln(classes) = {chance_loss:.2f} with accuracy at chance ({chance}) is a network "
            f"that does not learn, the end result of a vanishing gradient. {_interval_text(t.curves)} A red ✕ "
            "ends a curve whose runs include a diverged one.",
            lambda: figures.learning_curves(t.curves, t.palette, t.init_palette),
        ),
        FigureSpec(
            "activation_stats",
            "Activation statistics by layer",
            f"Mean and standard deviation of each hidden layer's output, and the share of dead "
            f"(ReLU family) and saturated (sigmoid family) units, at step 0 (solid) and at the end (dashed) "
            f"({where}). A standard deviation that collapses with depth, or fractions near 1, explain "
            f"where the gradient is lost. {_DIVERGED_TEXT}",
            lambda: figures.activation_stats(t.activations, t.palette),
        ),
        FigureSpec(
            "fixes",
            "Fixes",
            "Each fix next to its no-fix baseline (grey) for the same activation, initializer and depth. "
            "A fix works when it lifts accuracy and moves the log10 first/last ratio towards 0 "
            f"(equal gradient at the first and last layer). {_interval_text(t.fixes, 'Error bars')} "
            f"{_DIVERGED_TEXT}",
            lambda: figures.fixes(t.fixes, t.fix_palette),
        ),
        FigureSpec(
            "activation_functions",
            "Activations and their derivatives",
            "Each benchmarked activation (solid) and its derivative (dashed) on [-5, 5]. Backpropagation "
            "multiplies the gradient by the derivative at every layer: sigmoid's is at most 0.25, so depth alone "
            "shrinks the gradient; ReLU's is 1 where a unit is active and 0 where it is not.",
            lambda: figures.activation_functions(t.functions, t.palette),
        ),
    ]


def _interval_text(table: pd.DataFrame, what: str = "Bands") -> str:
    """The caption's sentence on intervals: only where a point rests on two or more seeds, else that there are none."""
    if figures.has_interval(table):
        return f"{what}: 95% interval over seeds, where a point has two or more."
    return "One seed per point: no interval."


_DIVERGED_TEXT = "A red ✕ marks a point whose runs include a diverged one (its numbers stop where it diverged)."


def _inputs_text(t: Tables) -> str:
    """How the predictions' input second moments were obtained, in one sentence."""
    inputs = t.predictions.inputs if t.predictions is not None else []
    if not inputs:
        return ""
    if len(inputs) == 1:
        return f"Theory inputs: {inputs[0]['text']}."
    exact = sum(1 for i in inputs if i["exact"])
    return (
        f"Theory inputs: {exact} of {len(inputs)} input settings from the examples measured at step 0"
        + ("" if exact == len(inputs) else ", the others from the mean E[x²] alone (approximate)")
        + "."
    )


def _draw(spec: FigureSpec):
    """The figure of a spec, or `figures.Skipped` with the reason it was not drawn."""
    with warnings.catch_warnings():
        # The reason comes back in the Skipped value; the summary lists it.
        warnings.simplefilter("ignore", figures.MissingDataWarning)
        try:
            fig = spec.draw()
        except Exception as e:  # one broken figure must not cost the rest of the report
            logger.exception("figure %s failed", spec.name)
            return figures.Skipped(f"drawing failed: {type(e).__name__}: {e}")
    return figures.Skipped("no data") if fig is None else fig


def _save(fig, out: Path, name: str, formats) -> tuple[list[str], bytes]:
    """Writes a figure in every format asked for; returns its files and its PNG for the page, and closes it."""
    # Files of formats not asked for this time would outlive the summary that lists them.
    for ext in set(FORMATS) - set(formats):
        (out / f"{name}.{ext}").unlink(missing_ok=True)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=figures.DPI)
        png = buf.getvalue()
        files = []
        for ext in formats:
            if ext == "png":  # the page's PNG, drawn once
                (out / f"{name}.png").write_bytes(png)
            else:
                fig.savefig(out / f"{name}.{ext}", format=ext, dpi=figures.DPI)
            files.append(f"{name}.{ext}")
        return files, png
    finally:
        plt.close(fig)


def _claim_figures(t: Tables, out: Path, formats, images: dict) -> None:
    """Draws each decided claim's figure (``claim-<id>``) and records it in the claim's entry as ``figure``."""
    from vgbench.bench import claims as registry

    drawn = set()
    for c in t.claims.get("claims", []):
        c["figure"] = None
        table = c.get("evidence_table")
        if table is None or table.empty:
            continue
        name = f"claim-{c['id']}"
        spec = FigureSpec(
            name,
            c["id"],
            "",
            lambda table=table, c=c: figures.claim_evidence(
                table, c["id"], registry.TRAINS_ACCURACY, registry.FAILS_ACCURACY, c.get("bound")
            ),
        )
        fig = _draw(spec)
        if isinstance(fig, figures.Skipped):
            logger.info("figure %s skipped: %s", name, fig.reason)
            continue
        files, images[name] = _save(fig, out, name, formats)
        c["figure"] = {"name": name, "files": files}
        drawn.add(name)
    # A claim figure of an earlier report whose claim has none now would contradict the summary.
    for ext in FORMATS:
        for path in out.glob(f"claim-*.{ext}"):
            if path.stem not in drawn:
                path.unlink(missing_ok=True)


def _check_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = formats.split(",")
    out = []
    for f in formats:
        f = str(f).strip().lower().lstrip(".")
        if not f:  # "png," or "png,,svg": a stray comma is not a format
            continue
        if f not in FORMATS:
            raise UsageError(f"Unknown figure format {f!r}. Valid formats: {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise UsageError(f"No figure format given. Valid formats: {', '.join(FORMATS)}")
    return tuple(out)


def build_report(results_dir, out_dir=None, formats=("png",)) -> Path:
    """Builds the report of a results directory.

    Writes one file per figure and format, ``summary.md``, ``summary.json``
    and a self-contained ``index.html`` (figures embedded as PNG) into
    ``out_dir``. Figures whose data is missing are skipped; their reasons
    are in the summaries, and files of theirs left by an earlier report are
    removed, as are a drawn figure's files in formats not asked for this
    time, so the directory matches the summary.

    Args:
        results_dir: a directory written by `vgbench run`.
        out_dir: where to write; default ``results_dir/report``.
        formats: figure file formats among ``png``, ``svg``, ``pdf`` (a
            sequence or a comma-separated string).

    Returns:
        The path of ``index.html``.

    Raises:
        UsageError: ``results_dir`` is missing, empty or not vgbench
            results, or a format is unknown.
    """
    formats = _check_formats(formats)
    results = load_results(results_dir)
    # A directory may hold both backends' runs of one config: the backend is then a varying key of the tables.
    results.runs = backend_mod.with_backend(results.runs)
    out = Path(out_dir) if out_dir is not None else results.path / "report"
    if out.exists() and not out.is_dir():
        raise UsageError(f"Report directory {str(out)!r} is a file.")
    out.mkdir(parents=True, exist_ok=True)

    tables = compute_tables(results)
    drawn, skipped, images = [], [], {}
    for spec in _figure_specs(tables):
        fig = _draw(spec)
        if isinstance(fig, figures.Skipped):
            logger.info("figure %s skipped: %s", spec.name, fig.reason)
            skipped.append({"name": spec.name, "title": spec.title, "reason": fig.reason})
            for ext in FORMATS:
                (out / f"{spec.name}.{ext}").unlink(missing_ok=True)
            continue
        files, images[spec.name] = _save(fig, out, spec.name, formats)
        drawn.append({"name": spec.name, "title": spec.title, "caption": spec.caption, "files": files})

    _claim_figures(tables, out, formats, images)
    summary = document.summary_dict(results, tables, drawn, skipped)
    document.write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(document.render_markdown(summary), encoding="utf-8")
    index = out / "index.html"
    index.write_text(document.render_html(summary, images), encoding="utf-8")
    return index
