"""The documentation against the code: numbers stated in README.md, CONTRIBUTING.md and docs/ come from
the code, and every relative link points to a file (and heading) that exists.

Each number is stated once in the pages; these tests parse it from there and compare it with what the
code says, so a change to a default, a suite or a claim fails here, naming the page to update.
No training: everything is read from declarations and from the committed baseline's tables.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import unicodedata
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
PAGES = [README, REPO_ROOT / "CONTRIBUTING.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# Pages another part of the project writes: a link to one is checked once the page exists,
# and skipped (with this reason, visible under `pytest -ra`) until then.
WRITTEN_ELSEWHERE = {"docs/testing.md": "docs/testing.md (the test tiers) is not in this checkout yet"}

_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)\)")
_CODE_BLOCK = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(path: Path) -> str:
    """A page without its fenced code blocks (a `[x](y)` in code is not a link)."""
    return _CODE_BLOCK.sub("", _text(path))


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _table(path: Path, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and rule left out) of the first table under ``heading``."""
    text = _text(path)
    start = text.index(f"\n{heading}\n")
    rows, seen = [], False
    for line in text[start:].splitlines()[2:]:
        if line.startswith("|"):
            seen = True
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif seen:
            break
        elif line.startswith("#"):
            break
    assert len(rows) > 2, f"no table under {heading!r} in {_rel(path)}"
    return rows[2:]


def _code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    assert m, f"expected a `code` cell, found {cell!r}"
    return m.group(1)


def _number(text: str) -> float:
    return float(text.replace(",", ""))


# --------------------------------------------------------------------------- links


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link keeps its text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    out, counts = set(), {}
    for line in _prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = _slug(m.group(1))
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links():
    for page in PAGES:
        for target in _LINK.findall(_prose(page)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            yield pytest.param(page, target, id=f"{_rel(page)}->{target}")


@pytest.mark.parametrize(("page", "target"), list(_links()))
def test_relative_links_point_to_existing_files_and_headings(page, target):
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    rel = dest.relative_to(REPO_ROOT).as_posix() if dest.is_relative_to(REPO_ROOT) else str(dest)
    if not dest.exists() and rel in WRITTEN_ELSEWHERE:
        pytest.skip(WRITTEN_ELSEWHERE[rel])
    assert dest.exists(), f"{_rel(page)} links to {target!r}: {rel} does not exist"
    if anchor:
        assert dest.suffix == ".md", f"{_rel(page)} links to an anchor of a non-Markdown file: {target!r}"
        assert anchor in _anchors(dest), f"{_rel(page)} links to {target!r}: {rel} has no heading #{anchor}"


def test_every_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _LINK.findall(_prose(README))}
    missing = [_rel(p) for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md lists no link to {missing}"


def test_slug_is_githubs():
    assert _slug("Data, offline and online") == "data-offline-and-online"
    assert _slug("The `claims` suite") == "the-claims-suite"
    assert _slug("Per backend, and oneDNN") == "per-backend-and-onednn"
    assert _slug("Your own model, and `vgbench diagnose`") == "your-own-model-and-vgbench-diagnose"
    assert _slug("Where a suite's time goes") == "where-a-suites-time-goes"


# --------------------------------------------------------------------------- README


def test_readme_is_one_screen_with_the_two_commands():
    text = _text(README)
    assert len(text.splitlines()) <= 200
    assert "make bench" in text and "make test" in text


def test_readme_names_the_claim_count():
    from vgbench.bench import claims

    counts = {int(n) for page in PAGES for n in re.findall(r"\b(\d+) claims\b", _prose(page))}
    assert counts == {len(claims.CLAIMS)}, counts


def test_readme_result_is_that_of_the_committed_baseline():
    """The sigmoid-against-ReLU numbers under the README's figure are those of reports/baseline."""
    from vgbench.bench import metrics
    from vgbench.bench.results import load_results

    res = load_results(REPO_ROOT / "reports" / "baseline")
    m = metrics.run_metrics(res.runs, res.layers)
    mlp = m[(m["arch"] == "mlp") & (m["fix"] == "none") & (m["depth"] == 10)]
    sig = mlp[(mlp["activation"] == "sigmoid") & (mlp["initializer"] == "glorot_uniform")].iloc[0]
    relu = mlp[(mlp["activation"] == "relu") & (mlp["initializer"] == "he_normal")].iloc[0]
    prose = " ".join(_prose(README).split())
    section = prose[prose.index("## The result") : prose.index("## Quickstart")]
    m_sig = re.search(
        r"sigmoid and Glorot init the backward signal shrinks ×([\d.]+) per layer .*? "
        r"about 10⁻([⁰¹²³⁴⁵⁶⁷⁸⁹]+) of the last one's gradient, and after (\d+) steps .*?\((\d+)% test accuracy\)",
        section,
    )
    m_relu = re.search(
        r"ReLU and He init the factor is ×([\d.]+), the first layer gets ([\d.]+) .*? reach (\d+)%", section
    )
    assert m_sig and m_relu, "the README's result sentences changed shape; update this test with them"
    assert m_sig.group(1) == f"{sig['backward_factor_init']:.2f}"
    exponent = int(m_sig.group(2).translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")))
    assert exponent == -round(math.log10(sig["grad_ratio_init"]))
    assert int(m_sig.group(3)) == sig["steps"]
    assert int(m_sig.group(4)) == round(100 * sig["test_accuracy"])
    assert m_relu.group(1) == f"{relu['backward_factor_init']:.2f}"
    assert m_relu.group(2) == f"{relu['grad_ratio_init']:.2f}"
    assert int(m_relu.group(3)) == round(100 * relu["test_accuracy"])


# --------------------------------------------------------------------------- running.md


def test_defaults_table_is_that_of_an_adhoc_run():
    """docs/running.md's defaults are RunConfig's, overridden by the `default` suite's (what `vgbench run` uses).

    Only the fields `vgbench run` has a grid option for: `backend` is an option of its own, and a
    suite-only field (`jacobian_examples`) is documented in prose.
    """
    from vgbench.bench import cli, suites
    from vgbench.bench.config import RunConfig

    expected = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in cli._GRID_OPTIONS}
    expected.update(suites.default_settings())
    rows = _table(REPO_ROOT / "docs" / "running.md", "## Defaults of an ad-hoc run")
    documented = {_code(flag): value for flag, value in rows}
    flags = {"--" + name.replace("_", "-"): name for name in expected}
    assert set(documented) == set(flags), f"documented {sorted(documented)}, options {sorted(flags)}"
    for flag, value in documented.items():
        want = expected[flags[flag]]
        assert value == ("none" if want is None else str(want)), f"{flag}: documented {value}, the code says {want}"


def test_run_help_shows_the_documented_defaults(capsys):
    from vgbench.bench.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    for flag, value in _table(REPO_ROOT / "docs" / "running.md", "## Defaults of an ad-hoc run"):
        pattern = r"(?<![\w-])" + re.escape(_code(flag)) + r"(?![\w-])(?:, --\w+)? \S+ .*?\(default: ([^)]+)\)"
        m = re.search(pattern, help_text)
        assert m, f"{_code(flag)} is not an option of `vgbench run`"
        assert m.group(1) == value, f"{_code(flag)}: documented {value}, `vgbench run --help` says {m.group(1)}"


# Expanding `full` (2,448 validated configs) takes several seconds: its checks are in the slow tier.
_SLOW_SUITES = {"full"}


@functools.cache
def _suite_size(name: str) -> int:
    from vgbench.bench import suites

    return len(suites.expand(suites.load_suite(name)))


def _suite_param(*values, name):
    return pytest.param(*values, marks=[pytest.mark.slow] if name in _SLOW_SUITES else [])


def _suite_rows():
    return {_code(name): n for name, n, _ in _table(REPO_ROOT / "docs" / "running.md", "## Suites")}


def test_suite_table_lists_every_suite():
    from vgbench.bench import suites

    assert set(_suite_rows()) == set(suites.names())


@pytest.mark.parametrize(("name", "n"), [_suite_param(k, v, name=k) for k, v in _suite_rows().items()])
def test_suite_table_counts_the_runs(name, n):
    assert _number(n) == _suite_size(name), f"docs/running.md: the {name} suite has {_suite_size(name)} runs, not {n}"


def _prose_counts():
    """Each `NAME` suite (N runs) in the pages, code comments included (`# the `smoke` suite (4 runs)`)."""
    out = []
    for page in PAGES:
        text = " ".join(_text(page).split())
        for name, n in re.findall(r"`(\w+)` suite(?:\]\([^)]*\))? \((\d[\d,]*) runs", text):
            out.append(_suite_param(page, name, n, name=name))
    return out


def test_prose_names_the_suites_run_counts():
    assert {p.values[1] for p in _prose_counts()} >= {"smoke", "default", "claims", "full"}


@pytest.mark.parametrize(("page", "name", "n"), _prose_counts())
def test_run_counts_in_prose_are_the_suites(page, name, n):
    assert _number(n) == _suite_size(name), f"{_rel(page)}: the {name} suite has {_suite_size(name)} runs, not {n}"


def test_shared_runs_of_default_and_claims():
    from vgbench.bench import suites

    ids = [{c.run_id for c in suites.expand(suites.load_suite(n))} for n in ("default", "claims")]
    prose = " ".join(_prose(REPO_ROOT / "docs" / "running.md").split())
    m = re.search(r"the (\d+) `default` runs whose config a claim also needs", prose)
    assert m and int(m.group(1)) == len(ids[0] & ids[1])


def test_input_limits():
    from vgbench.bench import cli
    from vgbench.bench.config import SEED_LIMIT
    from vgbench.models.registry import ECHO_LIMIT

    prose = " ".join(_prose(REPO_ROOT / "docs" / "running.md").split())
    assert SEED_LIMIT == 2**31 and "0 ≤ seed ≤ 2³¹ − 1;" in prose
    assert {_number(n) for n in re.findall(r"more than ([\d,]+) runs", prose)} == {cli.CONFIRM_RUNS}
    assert _number(re.search(r"a list expands to at most ([\d,]+) values", prose).group(1)) == cli.MAX_LIST_VALUES
    assert int(re.search(r"Echoed values are cut to (\d+) characters", prose).group(1)) == ECHO_LIMIT


def test_diagnose_starts_from_the_documented_defaults():
    """docs/own-model.md: `vgbench diagnose`'s settings are the default suite's (docs/running.md's table)."""
    from vgbench.bench import diagnose, suites

    prose = " ".join(_prose(REPO_ROOT / "docs" / "own-model.md").split())
    assert "their defaults are the default suite's" in prose
    mine, suite = diagnose.defaults(), suites.default_settings()
    for key in ("max_steps", "batch_size", "log_every", "act_every", "train_samples", "test_samples", "seed"):
        assert mine[key] == suite[key], f"diagnose's {key} is {mine[key]}, the default suite's {suite[key]}"


def test_deep_claims_share_of_the_claims_cost():
    """docs/performance.md: the share of the depth-30+ configurations by the stated per-run cost formula.

    The formula is that of a 300-step run; the steps' part scales with a run set's own budget.
    """
    from vgbench.bench import claims

    prose = " ".join(_prose(REPO_ROOT / "docs" / "performance.md").split())
    m = re.search(
        r"about ([\d.]+) \+ ([\d.]+) × depth CPU-seconds \(tracing ≈ ([\d.]+) per layer, 300 steps ≈ ([\d.]+) per layer"
        r".*? about (\d+)% of the claims suite's",
        prose,
    )
    assert m, "the cost formula's sentence in docs/performance.md changed shape"
    fixed, per_layer, tracing, steps, share = (float(x) for x in m.groups())
    assert per_layer == pytest.approx(tracing + steps)
    trained = [c for c in claims.required_configs() if c.max_steps > 0]
    cost = [fixed + (tracing + steps * c.max_steps / 300) * c.depth for c in trained]
    deep = sum(x for x, c in zip(cost, trained) if c.depth >= 30)
    assert share == round(100 * deep / sum(cost))


def _layout_entries() -> dict[str, str]:
    """docs/results.md's layout block: file name → its description."""
    block = re.search(r"```\n(OUT/manifest.json.*?)```", _text(REPO_ROOT / "docs" / "results.md"), re.DOTALL).group(1)
    entries = re.split(r"^OUT/(\S+)", block, flags=re.MULTILINE)[1:]
    return dict(zip(entries[::2], entries[1::2]))


def test_results_layout_names_every_column():
    from vgbench.bench import results

    entries = _layout_entries()
    for name, columns in (
        ("layers.parquet", results.LAYER_COLUMNS),
        ("variables.parquet", results.VARIABLE_COLUMNS),
        ("history.parquet", results.HISTORY_COLUMNS),
        ("runs.parquet", results.RUN_OUTCOME_COLUMNS),
    ):
        words = set(re.findall(r"[a-z_0-9]+", entries[name]))
        missing = [c for c in columns if c not in words]
        assert not missing, f"docs/results.md does not name the {name} columns {missing}"


def test_report_findings_limit():
    from vgbench.bench.report import findings

    prose = " ".join(_prose(REPO_ROOT / "docs" / "report.md").split())
    m = re.search(r"at most (\d+) numbered findings", prose)
    assert m and int(m.group(1)) == findings.MAX_BULLETS


# --------------------------------------------------------------------------- claims.md


def _depths(cell: str) -> set[int]:
    return {int(d) for d in cell.split(",")}


def test_claims_table_is_bench_claims():
    from vgbench.bench import claims

    rows = _table(REPO_ROOT / "docs" / "claims.md", "## The claims")
    assert [_code(r[0]) for r in rows] == list(claims.CLAIMS), "docs/claims.md lists other claims, or in another order"
    for cid, depth, width, runs, *_ in rows:
        claim = claims.CLAIMS[_code(cid)]
        budget = claim.budget()
        want_depths = set(budget["depth"]) if isinstance(budget["depth"], list) else {budget["depth"]}
        assert _depths(depth) == want_depths, f"{claim.id}: depth {sorted(want_depths)}, documented {depth}"
        assert int(width) == budget["width"], f"{claim.id}: width {budget['width']}, documented {width}"
        assert int(runs) == len(claim.configs()), f"{claim.id}: {len(claim.configs())} runs, documented {runs}"


def test_protocol_settings_are_bench_claims():
    from vgbench.bench import claims

    prose = " ".join(_prose(REPO_ROOT / "docs" / "claims.md").split())
    lrs = re.search(r"over learning rates ([\d.]+), ([\d.]+) and ([\d.]+) \(SGD with momentum", prose)
    assert lrs and tuple(float(x) for x in lrs.groups()) == claims.LEARNING_RATES["momentum"]
    seeds = re.search(r"and seeds (\d+(?:, \d+)*):", prose)
    assert seeds and tuple(int(x) for x in seeds.group(1).split(", ")) == claims.SEEDS
    trains = re.search(r"\*trains\* = median test accuracy at the best learning rate ≥ ([\d.]+);", prose)
    fails = re.search(r"\*fails\* = ≤ ([\d.]+) \(1.5× chance\)", prose)
    assert trains and float(trains.group(1)) == claims.TRAINS_ACCURACY
    assert fails and float(fails.group(1)) == pytest.approx(claims.FAILS_ACCURACY)
    suite = re.search(r"the `claims` suite \((\d+) runs\)", prose)
    assert suite and int(suite.group(1)) == len(claims.required_configs())


# --------------------------------------------------------------------------- ci.md


def test_compare_tolerances_table_is_the_code():
    from vgbench.bench.compare.tolerances import DEFAULT_TOLERANCES

    rows = _table(REPO_ROOT / "docs" / "ci.md", "## `vgbench compare`")
    documented = {_code(metric): tol for metric, _, tol in rows}
    assert documented.pop("status") == "—"
    assert set(documented) == set(DEFAULT_TOLERANCES), f"documented {sorted(documented)}"
    for metric, tol in documented.items():
        assert float(tol) == DEFAULT_TOLERANCES[metric], f"{metric}: {DEFAULT_TOLERANCES[metric]}, documented {tol}"


def test_compare_alpha_and_seeds():
    from vgbench.bench.compare.statistics import DEFAULT_ALPHA, MIN_SAMPLES

    prose = " ".join(_prose(REPO_ROOT / "docs" / "ci.md").split())
    alpha = re.search(r"`--alpha ALPHA`: .*?\(default ([\d.]+);", prose)
    assert alpha and float(alpha.group(1)) == DEFAULT_ALPHA
    seeds = re.search(r"with at least (\d+) seeds on both sides", prose)
    assert seeds and int(seeds.group(1)) == MIN_SAMPLES
