"""Figures of a report: each draws one long-form table of `bench.report.tables`.

A figure function takes the table it plots (and the colour mappings) and
returns a `matplotlib.figure.Figure`, or a `Skipped` value with the reason
(after a `MissingDataWarning`) when the table lacks what the figure needs.
Nothing here computes a statistic: means, intervals and ratios arrive ready
in the tables, so a figure and the written summary can never disagree. Axis
labels, log axes and limits of a quantity come from its registry entry.

The three line grids (gradient, depth sweep, activation statistics by layer)
are one helper, `facet_lines`: a row per `FacetRow`, a column per
initializer, a line per activation.

Every activation keeps one colour in every figure (`category_palette`,
built once per report from the sorted activation names).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import textwrap
import warnings

import matplotlib

# Reports are written to files, often on machines without a display.
matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import patches, ticker, transforms
from matplotlib.lines import Line2D

from vgbench.bench import metrics
from vgbench.bench.quantities import LAYER_QUANTITIES, Quantity
from vgbench.bench.report.tables import (
    ACTIVATION_STATISTICS,
    FIX_QUANTITIES,
    GRID_QUANTITIES,
    SWEEP_QUANTITIES,
)
from vgbench.bench.report.text import factor_text

DPI = 110

_RC = {
    **sns.axes_style("whitegrid"),
    **sns.plotting_context("paper", font_scale=1.05),
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "legend.fontsize": 7.5,
    "legend.title_fontsize": 8,
    "figure.titlesize": 11,
}

# Line styles of the two moments that several figures compare.
WHEN_STYLES = {"step 0": "-", "end of training": "--"}
SPLIT_STYLES = {"test": "-", "train": "--"}
SOURCE_STYLES = {"measured": "-", "theory": "--"}


class MissingDataWarning(UserWarning):
    """A figure was skipped because the data it needs is not in the results."""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """What a figure function returns instead of a figure it cannot draw.

    Attributes:
        reason: why, in words for the summary's list of skipped figures.
    """

    reason: str


def skip(figure: str, reason: str) -> Skipped:
    """Warns that ``figure`` was skipped and why; returns the `Skipped` value for the caller to return."""
    warnings.warn(f"{figure}: skipped, {reason}", MissingDataWarning, stacklevel=3)
    return Skipped(reason)


def requires(*columns):
    """Declares the columns a figure reads from its table.

    The decorated function is called only when its table has every column
    and at least one row; otherwise it warns (`MissingDataWarning`) and
    returns `Skipped` with the table's ``attrs["note"]`` as the reason when
    there is one. The figure is drawn with the report's style.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(table, *args, **kwargs):
            if table is None:
                return skip(fn.__name__, "no table")
            missing = [c for c in columns if c not in table.columns]
            if missing:
                return skip(fn.__name__, f"the table lacks column(s) {', '.join(missing)}")
            if table.empty:
                return skip(fn.__name__, table.attrs.get("note", "no data"))
            with plt.rc_context(_RC):
                return fn(table, *args, **kwargs)

        wrapper.required_columns = tuple(columns)
        return wrapper

    return decorate


def category_palette(names, palette: str = "tab10") -> dict:
    """A fixed {name: colour} mapping over the sorted distinct names.

    Args:
        names: the category values (duplicates and order do not matter).
        palette: a seaborn palette for up to 10 names; more names use "husl".
    """
    names = sorted({str(n) for n in names})
    colours = sns.color_palette(palette if len(names) <= 10 else "husl", len(names))
    return dict(zip(names, colours))


def fix_palette(fixes) -> dict:
    """Grey for the no-fix baseline, distinct colours for the fixes."""
    others = sorted({str(f) for f in fixes} - {"none"})
    return {"none": (0.55, 0.55, 0.55), **category_palette(others, "Set2")}


def _legend(fig, handles, title=None, loc="outside right center", ncols=1):
    # Centred beside the panels: at the top it would meet a title that spans the figure.
    if handles:
        fig.legend(handles=handles, title=title, loc=loc, frameon=False, ncols=ncols)


def _line(colour, label, style="-", marker=None):
    return Line2D([0], [0], color=colour, ls=style, marker=marker, lw=1.6, ms=4, label=label)


def _band(ax, x, lo, hi, colour, alpha=0.15, n=None):
    """The 95% interval as a band, only where it has width and (given ``n``) two or more seeds."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    where = hi > lo
    if n is not None:
        where &= np.asarray(n, float) >= 2
    if np.any(where):
        ax.fill_between(np.asarray(x), lo, hi, where=where, color=colour, alpha=alpha, lw=0)


# How a point that includes a diverged run is marked, in every figure.
DIVERGED_MARK = {"marker": "x", "color": "#b00000", "s": 34, "linewidths": 1.4, "zorder": 5}
DIVERGED_LABEL = "✕ includes a diverged run"
DIVERGED_ARTIST = "_diverged"  # the label of the crosses' artist (underscore: never in a legend)


def _mark_diverged(ax, x, y, diverged) -> bool:
    """Red crosses on the points whose group holds a diverged run; whether any was drawn."""
    if diverged is None:
        return False
    d = np.asarray(diverged, float) > 0
    x, y = np.asarray(x, float), np.asarray(y, float)
    d &= np.isfinite(y)
    if not d.any():
        return False
    ax.scatter(x[d], y[d], label=DIVERGED_ARTIST, **DIVERGED_MARK)
    return True


def _diverged_handle():
    return Line2D([0], [0], ls="none", marker="x", color=DIVERGED_MARK["color"], mew=1.4, ms=6, label=DIVERGED_LABEL)


def has_interval(table: pd.DataFrame) -> bool:
    """Whether any point of a long-form table rests on two or more seeds (and so has an interval)."""
    return "n" in table.columns and bool((pd.to_numeric(table["n"], errors="coerce") >= 2).any())


def _log_if_wide(ax, values, axis="y", decades=2.0):
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) and v.max() / v.min() > 10**decades:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _wrap(text, width=48):
    return "\n".join(textwrap.wrap(str(text), width))


def _suptitle(fig, title: str, where: str = "") -> None:
    """The figure's title, with its setting on a second line, wrapped to the figure's width so it is never cut."""
    chars = max(30, int(fig.get_figwidth() * 72 / (0.62 * 11)))
    lines = textwrap.wrap(title, chars)
    if where:
        lines += textwrap.wrap(f"({where})", int(chars * 1.15))
    fig.suptitle("\n".join(lines), fontsize=11 if len(lines) == 1 else 10)


def _padded(bounds, margin):
    """Axis limits of a bounded quantity, with a margin so that points at the bounds show."""
    return (bounds[0] - margin, bounds[1] + margin) if bounds is not None else None


# --------------------------------------------------------------------------- #
# Faceted line grids
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class FacetRow:
    """One row of a `facet_lines` grid: the table rows it draws and how its y axis looks.

    Attributes:
        where: {column: value} selecting the row's data.
        label: the y axis label.
        scale: ``"linear"``, ``"log"`` or ``"auto"`` (log when the row's
            means span more than two decades).
        limits: y limits, or None to fit the data.
        reference: a value marked by a dotted horizontal line, or None.
        positive: leave out non-positive means (a log axis cannot show them).
    """

    where: dict
    label: str
    scale: str = "linear"
    limits: tuple[float, float] | None = None
    reference: float | None = None
    positive: bool = False


def _selected(table: pd.DataFrame, where: dict) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for column, value in where.items():
        mask &= table[column] == value
    return mask


def facet_lines(
    table: pd.DataFrame,
    rows: list[FacetRow],
    palette: dict,
    *,
    x: str,
    xlabel: str,
    title: str,
    row_height: float,
    extra_height: float = 0.7,
    interval: str | None = "band",
    style: str | None = None,
    styles: dict | None = None,
    marker_size: float = 2.5,
    line_width: float = 1.4,
):
    """A grid of line plots: a row per `FacetRow` with data, a column per initializer, a line per activation.

    Args:
        table: long-form ``activation, initializer, <x>, mean, lo, hi`` and
            the columns the rows select on.
        rows: the rows, top to bottom; rows without data are left out.
        palette: activation → colour.
        x: the column on the x axis.
        xlabel: its label, under the bottom row.
        title: the figure's title; the table's ``attrs["slice"]`` follows it.
        row_height: inches per row; extra_height: inches for the titles.
        interval: how the 95% interval is drawn: ``"band"``, ``"bars"``
            (error bars) or None.
        style: a column whose values get their own line style, each
            activation drawn once per value.
        styles: {value of ``style``: line style}; `WHEN_STYLES` by default.
            A value whose style is dashed is drawn without markers.
        marker_size, line_width: of the lines.
    """
    styles = styles or WHEN_STYLES
    rows = [r for r in rows if _selected(table, r.where).any()]
    inits = sorted(table["initializer"].unique())
    # A single column still gets room for its title and the legend beside it.
    width = max(2.7 * len(inits) + 1.9, 6.4)
    fig, axes = plt.subplots(
        len(rows),
        len(inits),
        figsize=(width, row_height * len(rows) + extra_height),
        sharex=True,
        sharey="row",
        squeeze=False,
        layout="constrained",
    )
    hue = ["activation", style] if style else "activation"
    any_diverged = False
    for i, row in enumerate(rows):
        data = table[_selected(table, row.where)]
        for j, init in enumerate(inits):
            ax = axes[i, j]
            for key, g in data[data["initializer"] == init].groupby(hue, sort=True):
                act, kind = key if style else (key, None)
                colour = palette[act]
                g = g.sort_values(x)
                if row.positive:
                    g = g[g["mean"] > 0]
                n = g["n"].to_numpy(float) if "n" in g.columns else None
                several = n is not None and bool((n >= 2).any())
                if interval == "bars" and several:
                    yerr = np.clip(np.vstack([g["mean"] - g["lo"], g["hi"] - g["mean"]]), 0, None)
                    # A point of one seed has no interval: no tick either.
                    yerr[:, n < 2] = np.nan
                    ax.errorbar(
                        g[x], g["mean"], yerr=yerr, color=colour, marker="o", ms=marker_size, lw=line_width, capsize=2
                    )
                elif interval == "bars":
                    ax.plot(g[x], g["mean"], color=colour, marker="o", ms=marker_size, lw=line_width)
                else:
                    ls = styles.get(kind, "-") if style else "-"
                    marker = None if ls == "--" and styles is not WHEN_STYLES else "o"
                    ax.plot(g[x], g["mean"], color=colour, ls=ls, marker=marker, ms=marker_size, lw=line_width)
                    if interval == "band":
                        _band(ax, g[x], g["lo"], g["hi"], colour, n=n)
                if "diverged" in g.columns:
                    any_diverged |= _mark_diverged(ax, g[x], g["mean"], g["diverged"])
            if row.scale == "log":
                ax.set_yscale("log")
            elif row.scale == "auto":
                _log_if_wide(ax, data["mean"])
            if row.reference is not None:
                ax.axhline(row.reference, color="0.4", lw=0.8, ls=":")
            if row.limits is not None:
                ax.set_ylim(*row.limits)
            if i == 0:
                ax.set_title(short_name(init, 30))
            if j == 0:
                ax.set_ylabel(row.label)
            if i == len(rows) - 1:
                ax.set_xlabel(xlabel)
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    acts = sorted(table["activation"].unique())
    if style:
        handles = [_line(palette[a], a) for a in acts]
        shown = set(table[style].unique())
        handles += [_line("0.3", w, s) for w, s in styles.items() if w in shown]
    else:
        handles = [_line(palette[a], a, marker="o") for a in acts]
    if any_diverged:
        handles.append(_diverged_handle())
    _legend(fig, handles, "activation")
    _suptitle(fig, title, table.attrs.get("slice", ""))
    return fig


# --------------------------------------------------------------------------- #
# 1. Gradient norm against depth
# --------------------------------------------------------------------------- #


@requires("activation", "initializer", "parameter", "when", "layer_index", "mean", "lo", "hi")
def gradient_depth(profiles: pd.DataFrame, palette: dict):
    """Per-layer RMS gradient per weight against layer index: one line per activation.

    Rows: kernel/bias × step 0/end of training (those with data), then the
    backward and forward signals at step 0 when the table has them (its
    ``source`` column: measured solid, mean-field theory dashed); columns:
    initializers. A line falling towards layer 0 (the input) is a
    vanishing gradient. Log y.
    """
    rows = [
        FacetRow({"parameter": parameter, "when": when}, f"rms ∂L/∂{symbol} per weight\n{when}", scale="log")
        for parameter, symbol in (("kernel", "W"), ("bias", "b"))
        for when in WHEN_STYLES
    ]
    rows += [
        FacetRow({"parameter": "backward", "when": "step 0"}, "backward signal\nrms B·∂L/∂z, step 0", scale="log"),
        FacetRow({"parameter": "forward", "when": "step 0"}, "forward signal\nrms z, step 0", scale="log"),
    ]
    sourced = "source" in profiles.columns
    return facet_lines(
        profiles,
        rows,
        palette,
        x="layer_index",
        xlabel="layer index (0 = input side)",
        title="Gradient per weight by layer",
        row_height=2.1,
        style="source" if sourced else None,
        styles=SOURCE_STYLES if sourced else None,
    )


# --------------------------------------------------------------------------- #
# 1b. Theory against measurement
# --------------------------------------------------------------------------- #

_INIT_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


def _place_labels(ax, points, texts, colours, order, fontsize=6.5) -> int:
    """Labels beside their points, each at the first of a few offsets where it overlaps no other label or point.

    ``order``: the indices of the points in the order their labels are
    placed. A label that finds no free offset inside the axes is left out;
    returns how many were. A point whose label is already written beside a
    point on (nearly) the same spot gets none.
    """
    renderer = ax.figure.canvas.get_renderer()
    offsets = [(dx, dy) for dy in (0, 8, -8, 16, -16, 24, -24) for dx in (6, -6)]
    # The markers themselves are taken too: a label must not cover another point.
    placed = []
    for px, py in points:
        x, y = ax.transData.transform((px, py))
        placed.append(transforms.Bbox([[x - 4, y - 4], [x + 4, y + 4]]))
    skipped, labelled = 0, {}
    for i in order:
        (px, py), label, colour = points[i], texts[i], colours[i]
        at = ax.transData.transform((px, py))
        if any(np.hypot(*(at - other)) < 6 for other in labelled.get(label, [])):
            continue  # the same label on (nearly) the same spot: the point is named already
        for dx, dy in offsets:
            t = ax.annotate(
                label,
                (px, py),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                color=colour,
                ha="left" if dx > 0 else "right",
                va="center",
            )
            t.set_in_layout(False)  # kept inside the axes: the layout need not make room for it
            box = t.get_window_extent(renderer).expanded(1.02, 1.15)
            inside = ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                labelled.setdefault(label, []).append(at)
                break
            t.remove()
        else:
            skipped += 1
    return skipped


@requires("label", "activation", "initializer", "signal", "predicted", "measured")
def theory_vs_measurement(points: pd.DataFrame, palette: dict):
    """Predicted against measured per-layer factors at step 0: backward and forward signal, log-log.

    Identity line, a band of the findings' tolerance around it, one point per
    pair (colour: activation, marker: initializer). Points are labelled where
    a label fits, those farthest off the identity line first; the report's
    pair table holds every point. Pairs the theory does not cover are
    counted under the plot, by reason (listed in summary.json).
    """
    signals = [s for s in ("backward", "forward") if (points["signal"] == s).any()]
    tolerance = float(points.attrs.get("tolerance", 1.1))
    excluded = list(points.attrs.get("excluded", []))
    inits = sorted(points["initializer"].unique())
    markers = {init: _INIT_MARKERS[k % len(_INIT_MARKERS)] for k, init in enumerate(inits)}
    notes = _excluded_lines(excluded)
    any_diverged = False
    fig, axes = plt.subplots(
        1,
        len(signals),
        figsize=(5.4 * len(signals) + 2.6, 5.6 + 0.18 * len(notes)),
        squeeze=False,
        layout="constrained",
    )
    for ax, signal in zip(axes[0], signals):
        d = points[points["signal"] == signal]
        values = np.concatenate([d["predicted"].to_numpy(float), d["measured"].to_numpy(float)])
        lo, hi = float(values.min()), float(values.max())
        lo, hi = min(lo, 1.0) / 1.6, max(hi, 1.0) * 1.6
        line = np.array([lo, hi])
        ax.fill_between(line, line / tolerance, line * tolerance, color="0.85", lw=0, zorder=0)
        ax.plot(line, line, color="0.35", lw=0.9, zorder=1)
        ax.axhline(1.0, color="0.6", lw=0.6, ls=":")
        ax.axvline(1.0, color="0.6", lw=0.6, ls=":")
        for row in d.to_dict("records"):
            ax.scatter(
                row["predicted"],
                row["measured"],
                color=palette.get(row["activation"], "black"),
                marker=markers[row["initializer"]],
                s=28,
                zorder=3,
                edgecolors="white",
                linewidths=0.5,
            )
        if "diverged" in d.columns:
            any_diverged |= _mark_diverged(ax, d["predicted"], d["measured"], d["diverged"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(f"predicted {signal} factor per layer (mean-field theory)")
        ax.set_ylabel(f"measured {signal} factor per layer, step 0")
        ax.set_title(f"{signal} signal" + (" (towards the input)" if signal == "backward" else " (towards the output)"))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_locator(ticker.NullLocator())
    handles = [_line(palette[a], a, style="none", marker="o") for a in sorted(points["activation"].unique())]
    handles += [Line2D([0], [0], color="0.3", ls="none", marker=markers[i], label=compact_name(i)) for i in inits]
    handles += [patches.Patch(color="0.85", label=f"within ×{tolerance:g}")]
    if any_diverged:
        handles.append(_diverged_handle())
    _legend(fig, handles, "activation, initializer")
    fig.suptitle("Mean-field theory against measurement at step 0")
    note = fig.supxlabel("\n".join(["", *notes]), fontsize=7, color="0.3", ha="left", x=0.01)
    fig.canvas.draw()  # label sizes need a renderer with the final layout
    several_depths = "depth" in points.columns and points["depth"].nunique() > 1
    unlabelled = 0
    for ax, signal in zip(axes[0], signals):
        d = points[points["signal"] == signal]
        labels = [_short_label(r, several_depths) for r in d.to_dict("records")]
        # The disagreements first: they are what the findings name.
        order = list(np.argsort(-d["deviation"].to_numpy(float), kind="stable"))
        unlabelled += _place_labels(
            ax,
            list(zip(d["predicted"], d["measured"])),
            labels,
            [palette.get(a, "black") for a in d["activation"]],
            order,
        )
    if unlabelled:
        # Its line was reserved above (the blank first line), so the layout stays as the labels saw it.
        notes.insert(0, f"{unlabelled} points unlabelled for want of room (those farthest off the line come first).")
        note.set_text("\n".join(notes))
    return fig


def _excluded_lines(excluded: list[str], width: int = 150) -> list[str]:
    """The pairs the theory does not cover, counted by reason: one short line per reason."""
    if not excluded:
        return []
    counts = {}
    for entry in excluded:
        reason = entry.rsplit(": ", 1)[-1] if ": " in entry else entry
        counts[reason] = counts.get(reason, 0) + 1
    lines = [f"Not covered by the theory ({len(excluded)} pairs, listed in summary.json):"]
    for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(textwrap.shorten(f"{n} × {reason}", width, placeholder="…"))
    return lines


def _short_label(row: dict, depth: bool) -> str:
    """'gelu + glorot_uniform', with the depth when the points have several and the fix when there is one."""
    text = f"{row['activation']} + {compact_name(row['initializer'])}"
    if depth and row.get("depth") is not None:
        text += f", depth {row['depth']}"
    if row.get("fix") not in (None, "none"):
        text += f", {row['fix']}"
    return text


# --------------------------------------------------------------------------- #
# 2. Layer × step heatmaps
# --------------------------------------------------------------------------- #


def _edges(v):
    v = np.asarray(sorted(v), float)
    if len(v) == 1:
        return np.array([v[0] - 0.5, v[0] + 0.5])
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])


@requires("role", "label", "step", "layer_index", "layer_name", "log10_norm")
def gradient_heatmap(table: pd.DataFrame, palette: dict | None = None):
    """log10 RMS kernel gradient per weight per layer (rows) and step (columns).

    One panel per chosen run (best and worst pair), on one shared colour
    scale, so a dark band near layer 0 reads as a vanishing gradient in
    either panel.
    """
    roles = [r for r in ("best", "worst") if (table["role"] == r).any()]
    finite = table["log10_norm"].dropna()
    if finite.empty:
        return skip("gradient_heatmap", "every recorded gradient norm is zero or not finite")
    vmin, vmax = float(finite.min()), float(finite.max())
    fig, axes = plt.subplots(1, len(roles), figsize=(4.4 * len(roles) + 1.0, 3.6), squeeze=False, layout="constrained")
    mesh = None
    # Exactly-zero gradients (underflow in float32) have no logarithm: grey.
    cmap = plt.get_cmap("magma").with_extremes(bad="#c8c8c8")
    for ax, role in zip(axes[0], roles):
        d = table[table["role"] == role]
        z = d.pivot_table(index="layer_index", columns="step", values="log10_norm", aggfunc="first", dropna=False)
        z = z.sort_index().sort_index(axis=1)
        mesh = ax.pcolormesh(
            _edges(z.columns),
            _edges(z.index),
            np.ma.masked_invalid(z.to_numpy()),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            shading="flat",
        )
        names = d.drop_duplicates("layer_index").set_index("layer_index")["layer_name"]
        ticks = list(z.index)
        if len(ticks) > 12:
            every = math.ceil(len(ticks) / 12)
            ticks = ticks[::every] + ([ticks[-1]] if ticks[-1] not in ticks[::every] else [])
        ax.set_yticks(ticks)
        ax.set_yticklabels(["out" if names.get(t) == "output" else str(t) for t in ticks])
        if len(z.columns) <= 12:
            ax.set_xticks(list(z.columns))
        else:
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel("step")
        ax.set_ylabel("layer index (0 = input side)")
        why = "highest accuracy" if role == "best" else "most unequal gradient"
        ax.set_title(_wrap(f"{role} ({why}): {d['label'].iloc[0]}", 56))
        ax.grid(False)
    fig.colorbar(mesh, ax=axes[0].tolist(), label="log10 rms ∂L/∂W per weight (−3: 1/1000)", shrink=0.9)
    where = table.attrs.get("slice", "")
    where = table.attrs.get("why") or (f"both {where}" if where else "")
    _suptitle(fig, "Kernel gradient per weight, by layer and step (grey: exactly 0, underflow)", where)
    return fig


# --------------------------------------------------------------------------- #
# 3. Activation × initializer heatmaps
# --------------------------------------------------------------------------- #


def _floor_underflow(logs, margin):
    """log10 values with -inf (a gradient that underflowed to exactly 0) put
    ``margin`` below the smallest finite value, so the cell is coloured as
    the most vanishing one instead of left blank like a missing value."""
    logs = np.asarray(logs, float)
    finite = logs[np.isfinite(logs)]
    floor = min(float(finite.min()) if finite.size else 0.0, 0.0) - margin
    return np.where(np.isneginf(logs), floor, logs)


def _grid_style(quantity, values):
    """(cmap, norm kwargs, annotation formatter, colour values, colour bar label) of a grid panel, by unit."""
    q = metrics.METRICS.get(quantity) or LAYER_QUANTITIES[quantity]
    if q.unit == "accuracy":
        return "viridis", {"vmin": 0.0, "vmax": 1.0}, lambda v: f"{100 * v:.0f}%", values, "accuracy (linear, 0–1)"
    if GRID_QUANTITIES.get(quantity):
        # The grid holds log10 of the value (ratios spanning decades).
        colour = _floor_underflow(values, 1.0)
        finite = colour[np.isfinite(colour)]
        lim = max(1.0, float(np.abs(finite).max()) if finite.size else 1.0)
        label = "log10 of the ratio (0: equal; −3: 1/1000)"
        fmt = lambda v: "underflow" if np.isneginf(v) else f"{v:.1f}"  # noqa: E731
        return "RdBu", {"vmin": -lim, "vmax": lim}, fmt, colour, label
    if q.unit == "factor":
        # Coloured by log10 so that ×0.5 and ×2 look equally far from 1.
        with np.errstate(divide="ignore"):
            logs = _floor_underflow(np.log10(np.where(values >= 0, values, np.nan)), 0.1)
        lim = max(0.3, float(np.nanmax(np.abs(logs))) if np.isfinite(logs).any() else 0.3)
        label = "log10 of the factor (0: ×1; −1: ×0.1)"
        return "RdBu", {"vmin": -lim, "vmax": lim}, factor_text, logs, label
    return "Reds", {"vmin": 0.0, "vmax": 1.0}, lambda v: f"{v:.2f}", values, "fraction of units (linear, 0–1)"


def short_name(name: str, width: int = 18) -> str:
    """A tick label of a long initializer spec: numbers to 3 digits, keyword names and quotes dropped, wrapped.

    'variance_scaling(scale=0.3333333333333333, mode='fan_in', distribution='uniform')' becomes
    'variance_scaling(0.333,\nfan_in, uniform)'.
    """
    text = str(name)
    if len(text) <= width:
        return text
    text = compact_name(text)
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def compact_name(name: str) -> str:
    """An initializer spec on one line, numbers to 3 digits, keyword names and quotes dropped.

    'variance_scaling(distribution='uniform', scale=0.3333333333333333)' becomes
    'variance_scaling(uniform, 0.333)'.
    """
    text = re.sub(r"\d+\.\d{4,}", lambda m: f"{float(m.group()):.3g}", str(name))
    return re.sub(r"\b(mode|distribution|scale|stddev|mean|seed)=", "", text).replace("'", "").replace('"', "")


# Width, in inches, that a figure of the page may have before the page shrinks it (1,200 px at DPI 110).
PAGE_WIDTH = 10.6


@requires("activation", "initializer", "quantity", "label", "value")
def pair_heatmaps(grid: pd.DataFrame, palette: dict, quantities=None, title: str = "Activation × initializer"):
    """Annotated activation × initializer heatmaps, one per quantity.

    Quantities without any value (e.g. dead fraction when no ReLU-family
    activation ran) are left out. Activation labels carry their colour.
    Panels are laid out so that the figure fits the page's width
    (`PAGE_WIDTH`) at full size: its cells and labels are read as drawn.
    A blank cell says why; colour bars name their scale.

    Args:
        grid: the table of `tables.pair_grid`.
        palette: activation → colour.
        quantities: the quantities to draw, in order (default: all).
        title: the figure's title; the grid's slice follows it.
    """
    names = list(quantities) if quantities is not None else list(grid["quantity"].unique())
    quantities = [
        q
        for q in names
        if grid.loc[grid["quantity"] == q, "value"].notna().any()
        or (grid.loc[grid["quantity"] == q, "note"].fillna("") != "").any()
    ]
    if not quantities:
        return skip("pair_heatmaps", "no quantity has a value")
    acts = sorted(grid["activation"].unique())
    inits = sorted(grid["initializer"].unique())
    ticks = [short_name(i) for i in inits]
    tick_lines = max(t.count("\n") + 1 for t in ticks)
    w = 0.82 * len(inits) + 2.6
    h = 0.42 * len(acts) + 1.1 + 0.16 * tick_lines
    ncols = max(1, min(len(quantities), int(PAGE_WIDTH // w)))
    nrows = math.ceil(len(quantities) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + 0.5), squeeze=False, layout="constrained")
    for ax, q in zip(axes.flat, quantities):
        d = grid[grid["quantity"] == q]
        table = d.pivot_table(index="activation", columns="initializer", values="value", aggfunc="first", dropna=False)
        table = table.reindex(index=acts, columns=inits)
        values = table.to_numpy(dtype=float)
        cmap, norm, fmt, colour, bar_label = _grid_style(q, values)
        # -inf is log10 of an underflowed ratio: a value with its own label, not a blank.
        annot = np.vectorize(lambda v, fmt=fmt: fmt(v) if np.isfinite(v) or np.isneginf(v) else "", otypes=[object])(
            values
        )
        if "predicted" in d.columns and d["predicted"].notna().any():
            # The mean-field prediction under the measurement.
            pred = (
                d.pivot_table(
                    index="activation", columns="initializer", values="predicted", aggfunc="first", dropna=False
                )
                .reindex(index=acts, columns=inits)
                .to_numpy(dtype=float)
            )
            for i, j in np.ndindex(annot.shape):
                if annot[i, j] and np.isfinite(pred[i, j]):
                    annot[i, j] = f"{annot[i, j]}\n({factor_text(pred[i, j])})"
        notes = None
        if "note" in d.columns:
            notes = d.pivot_table(
                index="activation", columns="initializer", values="note", aggfunc="first", dropna=False
            ).reindex(index=acts, columns=inits)
        sns.heatmap(
            pd.DataFrame(colour, index=acts, columns=ticks),
            ax=ax,
            cmap=cmap,
            annot=annot,
            fmt="",
            annot_kws={"fontsize": 8, "linespacing": 1.0},
            linewidths=0.5,
            linecolor="white",
            cbar_kws={"shrink": 0.9, "label": bar_label},
            **norm,
        )
        ax.collections[0].colorbar.ax.yaxis.label.set_size(8)
        ax.collections[0].colorbar.ax.tick_params(labelsize=8)
        if notes is not None:
            # A blank cell says why it is blank (seaborn writes nothing in a cell without a value);
            # a pair without a row in the grid was not run in this setting.
            for i, j in np.ndindex(annot.shape):
                note = notes.iat[i, j]
                note = note if isinstance(note, str) else "not run"
                if not annot[i, j] and note:
                    ax.text(j + 0.5, i + 0.5, note, ha="center", va="center", fontsize=8, color="0.3", style="italic")
        ax.set_title(_wrap(d["label"].iloc[0], int(w * 9)), fontsize=9.5)
        ax.grid(False)
        ax.set_facecolor("0.94")  # cells without a value (e.g. dead fraction of sigmoid)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(axis="x", rotation=30, labelsize=8.5)
        ax.tick_params(axis="y", labelsize=8.5)
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
        for label in ax.get_yticklabels():
            label.set_color(palette.get(label.get_text(), "black"))
            label.set_rotation(0)
    for ax in list(axes.flat)[len(quantities) :]:
        ax.set_visible(False)
    _suptitle(fig, title, grid.attrs.get("slice", ""))
    return fig


# --------------------------------------------------------------------------- #
# 4. Depth sweep
# --------------------------------------------------------------------------- #


def _sweep_row(name: str, q: Quantity) -> FacetRow:
    if q.log:
        # Ratios: 1 is an equal gradient at the first and the last layer.
        return FacetRow({"quantity": name}, _wrap(q.label, 26), scale="log", reference=1.0, positive=True)
    return FacetRow({"quantity": name}, _wrap(q.label, 26), limits=_padded(q.bounds, 0.02))


@requires("activation", "initializer", "depth", "quantity", "mean", "lo", "hi")
def depth_sweep(sweep: pd.DataFrame, palette: dict):
    """Test accuracy and first/last gradient ratio against depth.

    One line per activation, one column per initializer; the ratio on a log
    axis, where a straight falling line is a constant per-layer factor.
    """
    rows = [_sweep_row(name, q) for name, q in SWEEP_QUANTITIES.items()]
    return facet_lines(
        sweep,
        rows,
        palette,
        x="depth",
        xlabel="depth (hidden layers)",
        title="Depth sweep",
        row_height=2.2,
        extra_height=0.6,
        interval="bars",
        marker_size=3.5,
    )


# --------------------------------------------------------------------------- #
# 5. Learning curves
# --------------------------------------------------------------------------- #


@requires("activation", "initializer", "step", "quantity", "split", "mean", "lo", "hi")
def learning_curves(curves: pd.DataFrame, palette: dict, init_palette: dict):
    """Loss and accuracy against step, one block of two panels per activation.

    Colour: initializer; solid test, dashed train. The panel titles carry
    the activation's colour.
    """
    acts = sorted(curves["activation"].unique())
    ncols = min(4, len(acts))
    blocks = math.ceil(len(acts) / ncols)
    fig, axes = plt.subplots(
        2 * blocks,
        ncols,
        figsize=(2.6 * ncols + 1.9, 3.6 * blocks + 0.5),
        sharex=True,
        squeeze=False,
        layout="constrained",
    )
    any_diverged = False
    for k, act in enumerate(acts):
        b, j = divmod(k, ncols)
        for r, quantity in enumerate(("loss", "accuracy")):
            ax = axes[2 * b + r, j]
            d = curves[(curves["activation"] == act) & (curves["quantity"] == quantity)]
            for (init, split), g in d.groupby(["initializer", "split"], sort=True):
                g = g.sort_values("step")
                ax.plot(g["step"], g["mean"], color=init_palette[init], ls=SPLIT_STYLES.get(split, "-"), lw=1.3)
                if split == "test":  # one band per initializer keeps the panel readable
                    n = g["n"] if "n" in g.columns else None
                    _band(ax, g["step"], g["lo"], g["hi"], init_palette[init], alpha=0.1, n=n)
                    if "diverged" in g.columns and (g["diverged"] > 0).any():
                        # A diverged run's curve stops where it diverged: the cross marks the curve's last point.
                        last = g.iloc[[-1]]
                        any_diverged |= _mark_diverged(ax, last["step"], last["mean"], [1])
            if quantity == "loss":
                ax.set_title(act, color=palette[act], fontweight="bold")
                _log_if_wide(ax, d["mean"], decades=1.0)
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
                if ax.get_yscale() == "linear":
                    ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))
            else:
                ax.set_ylim(-0.02, 1.02)
                ax.set_xlabel("step")
                ax.tick_params(labelbottom=True)  # every block gets its step axis
            if j == 0:
                ax.set_ylabel(quantity)
    for k in range(len(acts), blocks * ncols):
        b, j = divmod(k, ncols)
        axes[2 * b, j].set_visible(False)
        axes[2 * b + 1, j].set_visible(False)
    inits = sorted(curves["initializer"].unique())
    handles = [_line(init_palette[i], i) for i in inits]
    handles += [_line("0.3", f"{s} split", style) for s, style in SPLIT_STYLES.items()]
    if any_diverged:
        handles.append(_diverged_handle())
    _legend(fig, handles, "initializer")
    title = "Learning curves, mean over seeds" if has_interval(curves) else "Learning curves"
    _suptitle(fig, title, curves.attrs.get("slice", ""))
    return fig


# --------------------------------------------------------------------------- #
# 6. Activation statistics by layer
# --------------------------------------------------------------------------- #


def _statistic_row(name: str, q: Quantity) -> FacetRow:
    scale = "auto" if q.log else "linear"
    return FacetRow({"statistic": name}, q.label, scale=scale, limits=_padded(q.bounds, 0.03))


@requires("activation", "initializer", "statistic", "when", "layer_index", "mean", "lo", "hi")
def activation_stats(profiles: pd.DataFrame, palette: dict):
    """Activation mean/std and dead/saturated fractions per layer.

    Rows: statistics with data; columns: initializers; solid at step 0,
    dashed at the end of training. A std collapsing towards the output, or
    fractions near 1, explain a vanishing gradient.
    """
    rows = [_statistic_row(name, q) for name, q in ACTIVATION_STATISTICS.items()]
    return facet_lines(
        profiles,
        rows,
        palette,
        x="layer_index",
        xlabel="layer index (0 = input side)",
        title="Activation statistics by layer",
        row_height=1.9,
        interval=None,
        style="when",
        marker_size=2,
        line_width=1.3,
    )


# --------------------------------------------------------------------------- #
# 7. Fixes against the baseline
# --------------------------------------------------------------------------- #


@requires("case", "fix", "quantity", "mean", "lo", "hi")
def fixes(effects: pd.DataFrame, fix_colours: dict):
    """Each fix next to its no-fix baseline, per hard case (grouped bars).

    Ratios (log quantities) are shown as log10 of the geometric mean: a fix that moves the
    bar towards 0 restores the gradient reaching the first layer.
    """
    measured = set(effects.loc[effects["mean"].notna(), "quantity"])
    panels = [(name, q) for name, q in FIX_QUANTITIES.items() if name in measured]
    if not panels:
        return skip("fixes", "no fix case has a measured value")
    cases = sorted(effects["case"].unique())
    fix_names = ["none"] + sorted(set(effects["fix"]) - {"none"})
    height = 0.8 / len(fix_names)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.0 * len(panels) + 3.4, 0.32 * len(cases) * len(fix_names) + 1.4),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    any_diverged = False
    for ax, (quantity, q) in zip(axes[0], panels):
        d = effects[effects["quantity"] == quantity].set_index(["case", "fix"])
        for k, fix in enumerate(fix_names):
            y, v, lo, hi, div = [], [], [], [], []
            for c_i, case in enumerate(cases):
                if (case, fix) not in d.index:
                    continue
                row = d.loc[(case, fix)]
                m, a, b = float(row["mean"]), float(row["lo"]), float(row["hi"])
                if q.log:
                    if not m > 0:
                        continue
                    m, a, b = np.log10(m), np.log10(max(a, 1e-300)), np.log10(max(b, 1e-300))
                if not np.isfinite(m):
                    continue
                y.append(c_i - 0.4 + height * (k + 0.5))
                v.append(m)
                several = float(row.get("n", 1)) >= 2
                # One seed has no interval: no error tick.
                lo.append(max(m - a, 0) if several and np.isfinite(a) else np.nan)
                hi.append(max(b - m, 0) if several and np.isfinite(b) else np.nan)
                div.append(int(row.get("diverged", 0) or 0))
            if y:
                bars = np.isfinite(lo).any()
                ax.barh(
                    y,
                    v,
                    height=height * 0.92,
                    color=fix_colours[fix],
                    xerr=[lo, hi] if bars else None,
                    capsize=2,
                    error_kw={"lw": 0.8},
                )
                any_diverged |= _mark_diverged(ax, v, y, div)
        if q.log:
            ax.axvline(0, color="0.3", lw=0.8)
            ax.set_xlabel(_wrap(f"log10 {q.label}", 34))
        else:
            if q.bounds is not None:
                ax.set_xlim(*q.bounds)
            ax.set_xlabel(q.label)
        ax.grid(axis="y", visible=False)
    axes[0, 0].set_yticks(range(len(cases)))
    axes[0, 0].set_yticklabels([_wrap(c, 30) for c in cases])
    axes[0, 0].invert_yaxis()
    handles = [patches.Patch(color=fix_colours[f], label=f) for f in fix_names]
    if any_diverged:
        handles.append(_diverged_handle())
    _legend(fig, handles, "fix")
    fig.suptitle("Fixes against the no-fix baseline")
    return fig


# --------------------------------------------------------------------------- #
# 8. The activations and their derivatives
# --------------------------------------------------------------------------- #


@requires("activation", "x", "f", "df")
def activation_functions(curves: pd.DataFrame, palette: dict):
    """Each benchmarked activation (solid) and its derivative (dashed).

    The largest value of the derivative bounds how much one layer can pass
    back: 0.25 for sigmoid, 1 for ReLU on its positive side.
    """
    acts = sorted(curves["activation"].unique())
    ncols = min(4, len(acts))
    nrows = math.ceil(len(acts) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.5 * ncols + 0.2, 2.1 * nrows + 0.7), sharex=True, squeeze=False, layout="constrained"
    )
    for ax, act in zip(axes.flat, acts):
        d = curves[curves["activation"] == act].sort_values("x")
        colour = palette.get(act, "black")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.axhline(1, color="0.6", lw=0.6, ls=":")
        ax.plot(d["x"], d["f"], color=colour, lw=1.6)
        ax.plot(d["x"], d["df"], color="black", lw=1.2, ls="--")
        peak = float(np.nanmax(d["df"]))
        ax.text(
            0.03,
            0.95,
            f"max f′ = {peak:.3g}",
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
        lo, hi = float(np.nanmin(d[["f", "df"]].to_numpy())), float(np.nanmax(d[["f", "df"]].to_numpy()))
        ax.set_ylim(max(lo, -3.0) - 0.15, min(hi, 5.0) + 0.15)
        ax.set_title(act, color=colour, fontweight="bold")
    for ax in list(axes.flat)[len(acts) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("x")
    _legend(fig, [_line("0.3", "f(x)"), _line("black", "f′(x)", "--")], None, loc="outside lower center", ncols=2)
    fig.suptitle("Activations and their derivatives")
    return fig


# --------------------------------------------------------------------------- #
# 9. A claim's evidence
# --------------------------------------------------------------------------- #

# Colours of a configuration's outcome under the protocol (bench.claims.trainability).
TRAINABILITY_COLOURS = {"trains": "#1a7f37", "partial": "#c07000", "fails": "#b00000", "unknown": "0.5"}


# The panels of a claim's figure, in order: one row per run set, or one line per run set by layer.
_ROW_KINDS = ("train", "init", "factor", "ratio", "dead", "steps")
_LAYER_KINDS = ("act_mean", "act_variance")
_ROW_LABELS = {
    "train": "median test accuracy at the best learning rate (line: seeds' min–max)",
    "init": "per-layer backward factor at step 0 (line: seeds' min–max; ◆ theory)",
    "factor": "per-layer backward factor at step 0, seeds at the best learning rate",
    "ratio": "first/last layer gradient norm at step 0, seeds at the best learning rate",
    "dead": "mean dead fraction of hidden units, last step (○ step 0), seeds at the best learning rate",
    "steps": "steps to 0.80 test accuracy, seeds at the best learning rate (| budget; at it: never)",
}
_LAYER_LABELS = {"act_mean": "activation mean at step 0", "act_variance": "activation variance at step 0"}


def _grid_note(r) -> str:
    """'lr 0.003' and, when the protocol extended the grid or its best is at an edge, the grid."""
    text = f"lr {r['best_learning_rate']:g}"
    grid = r.get("learning_rates") or ""
    edge = r.get("edge") or ""
    if grid and (len(grid.split("/")) > 3 or edge):
        text += f" of {grid}"
    if edge:
        text += f" ({'smallest' if edge == 'low' else 'largest'}: not bracketed)"
    return text


@requires("run_set", "kind", "median", "min", "max", "n", "best_learning_rate", "diverged")
def claim_evidence(table: pd.DataFrame, title: str, trains: float, fails: float, bound: float | None = None):
    """A claim's runs at a glance, with the quantity its verdict rests on.

    Trained sets: the median test accuracy at the configuration's best
    learning rate (dot, coloured by trains / partly / fails), the seeds'
    min–max (a line, only with two or more seeds), the thresholds of the
    protocol, and the winning learning rate (with the grid when the protocol
    extended it or the best is at its edge) and the diverged runs written
    (a cross on the dot where seeds diverged at the winning rate) beside
    it. Sets at initialization: the per-layer backward factor at step 0
    (log axis) with the mean-field prediction (diamond) and ``bound`` when
    the claim states one. Then one panel per verdict quantity of
    `bench.report.verdicts.evidence_table`: per set, the backward factor or
    gradient ratio at init, the dead fraction at the end or the steps to
    the accuracy threshold (with the budget), or by layer the activation
    mean and variance at init (median, seeds' min–max band, the rule's
    bounds dashed).

    Args:
        table: the table of `bench.report.verdicts.evidence_table`.
        title: the claim's id.
        trains, fails: the protocol's accuracy thresholds.
        bound: a per-layer factor the claim bounds the backward signal by.
    """
    kinds = [k for k in (*_ROW_KINDS, *_LAYER_KINDS) if (table["kind"] == k).any()]
    heights = [len(table[table["kind"] == k]) if k in _ROW_KINDS else 5 for k in kinds]
    fig, axes = plt.subplots(
        len(kinds),
        1,
        figsize=(7.4, 0.34 * sum(heights) + 0.95 * len(kinds) + 0.3),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": [h + 1.6 for h in heights]},
    )
    any_diverged = False
    for ax, kind in zip(axes[:, 0], kinds):
        d = table[table["kind"] == kind].reset_index(drop=True)
        if kind in _LAYER_KINDS:
            _layer_panel(ax, d, kind)
            continue
        y = np.arange(len(d))
        several = d["n"].to_numpy(float) >= 2
        if kind == "train":
            colours = [TRAINABILITY_COLOURS.get(t, "0.5") for t in d["trainability"]]
            ax.axvspan(trains, 1.0, color=TRAINABILITY_COLOURS["trains"], alpha=0.07, lw=0)
            ax.axvspan(0.0, fails, color=TRAINABILITY_COLOURS["fails"], alpha=0.07, lw=0)
            ax.axvline(trains, color=TRAINABILITY_COLOURS["trains"], lw=0.8, ls="--")
            ax.axvline(fails, color=TRAINABILITY_COLOURS["fails"], lw=0.8, ls="--")
            ax.set_xlim(0.0, 1.0)
        elif kind in ("init", "factor", "ratio"):
            colours = ["0.2"] * len(d)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(
                ticker.LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0) if kind != "ratio" else (1.0,))
            )
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            ax.axvline(1.0, color="0.5", lw=0.8, ls=":")
            if bound is not None and kind == "init":
                ax.axvline(bound, color=TRAINABILITY_COLOURS["fails"], lw=0.8, ls="--")
                ax.text(
                    bound, -0.7, f" bound {bound:g}", fontsize=7.5, color=TRAINABILITY_COLOURS["fails"], va="bottom"
                )
        elif kind == "dead":
            colours = ["0.2"] * len(d)
            ax.set_xlim(0.0, max(0.05, float(np.nanmax(d["max"].to_numpy(float), initial=0.0)) * 1.15))
        else:  # steps
            colours = ["0.2"] * len(d)
            budgets = d["limit_high"].to_numpy(float)
            for i, b in enumerate(budgets):
                if np.isfinite(b):
                    ax.plot([b], [i], marker="|", ms=14, color=TRAINABILITY_COLOURS["fails"], zorder=3)
            ax.set_xlim(0.0, float(np.nanmax(budgets, initial=1.0)) * 1.05)
        ax.set_xlabel(_ROW_LABELS[kind])
        for i, r in d.iterrows():
            if several[i] and np.isfinite(r["min"]) and np.isfinite(r["max"]):
                ax.plot([r["min"], r["max"]], [i, i], color=colours[i], lw=2.2, alpha=0.6, solid_capstyle="butt")
            if np.isfinite(r["median"]):
                ax.scatter([r["median"]], [i], color=colours[i], s=36, zorder=4)
            if kind == "init" and np.isfinite(r.get("predicted", np.nan)):
                ax.scatter([r["predicted"]], [i], marker="D", facecolor="none", edgecolor="0.2", s=30, zorder=4)
            if kind == "dead" and np.isfinite(r.get("predicted", np.nan)):
                ax.scatter([r["predicted"]], [i], marker="o", facecolor="none", edgecolor="0.2", s=36, zorder=4)
        # A claim whose run sets train for different budgets states each set's steps.
        budgets = pd.to_numeric(d.get("max_steps", pd.Series(dtype=float)), errors="coerce")
        own_steps = kind == "train" and budgets.nunique() > 1
        note = []
        for _, r in d.iterrows():
            parts = []
            if own_steps and np.isfinite(float(r["max_steps"])):
                parts.append(f"{int(r['max_steps']):,} steps")
            if kind == "train" and np.isfinite(r["best_learning_rate"]):
                parts.append(_grid_note(r))
            if kind == "train" and r["diverged"]:
                lrs = r.get("diverged_lrs") or ""
                where = f" (lr {lrs})" if lrs else ""
                parts.append(f"{int(r['diverged'])} of {int(r['runs'])} runs diverged{where}")
            if kind == "init" and r["diverged"]:
                parts.append(f"{int(r['diverged'])} of {int(r['runs'])} runs diverged")
            if kind != "train" and kind != "init" and np.isfinite(r["median"]):
                parts.append("never" if kind == "steps" and r["median"] >= r["limit_high"] else f"{r['median']:.3g}")
            note.append(", ".join(parts))
        if kind == "train":
            at = np.where(np.isfinite(d["median"]), d["median"], 0.0)
            any_diverged |= _mark_diverged(ax, at, y, d.get("diverged_at_best", d["diverged"]))
        for i, text_ in enumerate(note):
            ax.annotate(
                text_,
                (1.0, i),
                xycoords=("axes fraction", "data"),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=7.5,
                color="0.25",
            )
        ax.set_yticks(y)
        ax.set_yticklabels(d["run_set"], fontsize=8)
        ax.set_ylim(len(d) - 0.5, -0.9)
        ax.grid(axis="y", visible=False)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.xaxis.label.set_size(8)
    handles = [
        Line2D([0], [0], ls="none", marker="o", color=c, label=k)
        for k, c in TRAINABILITY_COLOURS.items()
        if k != "unknown" and "train" in kinds
    ]
    if any_diverged:
        handles.append(_diverged_handle())
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=7.5)
    fig.suptitle(title, fontsize=9.5)
    return fig


def _layer_panel(ax, d: pd.DataFrame, kind: str) -> None:
    """One line per run set by hidden layer: the median over seeds, the seeds' min–max band, the rule's bounds."""
    sets = list(dict.fromkeys(d["run_set"]))
    colours = category_palette(sets, "Dark2")
    for name in sets:
        g = d[d["run_set"] == name].sort_values("layer")
        c = colours[name]
        ax.plot(g["layer"], g["median"], color=c, lw=1.4, label=f"{name} (median of {int(g['runs'].max())} seeds)")
        ax.fill_between(g["layer"], g["min"], g["max"], color=c, alpha=0.18, lw=0)
        for limit in ("limit_low", "limit_high"):
            v = pd.to_numeric(g[limit], errors="coerce").dropna()
            if len(v):
                ax.axhline(float(v.iloc[0]), color=c, lw=0.8, ls="--")
    if kind == "act_mean":
        ax.axhline(0.0, color="0.5", lw=0.6, ls=":")
    else:
        ax.axhline(1.0, color="0.5", lw=0.6, ls=":")
    ax.set_xlabel("hidden layer (dashed: the rule's bounds; band: seeds' min–max)")
    ax.set_ylabel(_LAYER_LABELS[kind], fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.xaxis.label.set_size(8)
    # Above the axes: inside, it would cover the first layers' lines and bands.
    ax.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), borderaxespad=0.2, ncols=2)


@requires("label", "source", "layer_index", "spread", "spread_lo", "spread_hi", "mean_sq")
def jacobian_spectrum(profile: pd.DataFrame, palette: dict | None = None):
    """The Jacobian's spectrum by depth: spread Var(s²)/E[s²]² and mean s² of J_l against l, measured and predicted.

    One colour per configuration; measured solid with the range over runs and
    examples as a band, the free-probability prediction dashed
    (`bench.spectrum.spread_by_depth` computes both).
    """
    labels = sorted(profile["label"].unique())
    colours = category_palette(labels)
    floor = 1e-4  # an exact isometry has spread 0, drawn at the floor of the log axis
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), layout="constrained")
    panels = (
        ("spread", "Var(s²)/E[s²]² of J_l (0: isometry)", "spread of the spectrum"),
        ("mean_sq", "E[s²] of J_l", "mean squared singular value"),
    )
    for ax, (q, ylabel, title) in zip(axes, panels):
        for label in labels:
            for source, style in SOURCE_STYLES.items():
                d = profile[(profile["label"] == label) & (profile["source"] == source)].sort_values("layer_index")
                if d.empty:
                    continue
                y = d[q].to_numpy(float)
                if q == "spread":
                    y = np.maximum(y, floor)
                ax.plot(d["layer_index"], y, ls=style, color=colours[label], lw=1.3)
                if source == "measured" and f"{q}_lo" in d.columns:
                    lo, hi = d[f"{q}_lo"].to_numpy(float), d[f"{q}_hi"].to_numpy(float)
                    if q == "spread":
                        lo, hi = np.maximum(lo, floor), np.maximum(hi, floor)
                    ax.fill_between(d["layer_index"], lo, hi, color=colours[label], alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("l: layers in the product J_l = ∂z_l/∂z_0")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    handles = [_line(colours[label], label) for label in labels]
    names = {"measured": "measured (band: range)", "theory": "theory (large width)"}
    handles += [_line("0.3", names[source], style) for source, style in SOURCE_STYLES.items()]
    _legend(fig, handles, "configuration")
    fig.suptitle("Jacobian spectrum at initialization by depth (dynamical isometry)")
    return fig
