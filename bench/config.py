"""`RunConfig`: everything that defines one benchmark run.

A config is frozen and validated on construction; names of activations,
initializers and fixes are stored in their canonical form, so two spellings
of the same run (``"Xavier_Uniform"`` and ``"glorot_uniform"``) get the same
``run_id``. The ``run_id`` is a readable slug plus a short hash of the whole
config: identical across processes and machines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass

from vgbench import models
from vgbench.bench.backend import BACKENDS, DEFAULT_BACKEND
from vgbench.bench.utils import closest, slug
from vgbench.models.registry import bind_params, parse_spec, shorten

ARCHS = ("mlp", "cnn")
OPTIMIZERS = ("sgd", "momentum", "adam")
PREPROCESSINGS = ("scale", "standardize")

# Fixes: name → (parameter name, default value, type). "none" is the baseline.
FIXES = {
    "batchnorm": None,
    "batchnorm_after": None,
    "layernorm": None,
    "residual": ("every", 2, int),
    "clipnorm": ("norm", 1.0, float),
    "dropout": ("rate", 0.1, float),
}
_NORM_FIXES = ("batchnorm", "batchnorm_after", "layernorm")

# What each fix does, in one line (`vgbench list fixes`).
FIX_DESCRIPTIONS = {
    "none": "the baseline: each hidden block is its weight layer, then its activation",
    "batchnorm": "batch normalization between each hidden weight layer (then without bias) and its activation",
    "batchnorm_after": "batch normalization after each hidden block's activation",
    "layernorm": "layer normalization between each hidden weight layer and its activation",
    "residual": "adds the input of every group of `every` hidden blocks to its output (identity skip)",
    "clipnorm": "clips each weight's gradient to L2 norm at most `norm` before the update (Keras clipnorm)",
    "dropout": "dropout of rate `rate` after each hidden block, during training",
}

# Biases start at zero unless a run says otherwise; a run with the default
# keeps the run_id it had before the field existed (see `RunConfig.run_id`).
DEFAULT_BIAS_INITIALIZER = "zeros"

# Fields added after results were published, with their defaults: they join an
# identity (run_id, compare's benchmark names) only when they differ from the
# default, so older runs keep their names and reports/baseline still matches.
LATE_FIELD_DEFAULTS = {
    "bias_initializer": DEFAULT_BIAS_INITIALIZER,
    "backend": DEFAULT_BACKEND,
    "jacobian_examples": 0,
}


def stable_identity(values: dict) -> dict:
    """`values` without the late fields that hold their default (see LATE_FIELD_DEFAULTS)."""
    return {k: v for k, v in values.items() if not (k in LATE_FIELD_DEFAULTS and v == LATE_FIELD_DEFAULTS[k])}


# Learning rates above this diverge at once in every model here; a typo such
# as 1e308 or inf would only fill a suite with diverged runs.
MAX_LEARNING_RATE = 10.0
# A run's seed, like the per-layer seeds derived from it
# (`models.architectures.layer_seed`), stays within the 31 bits that
# TensorFlow's and JAX's random generators take.
SEED_LIMIT = 2**31


def canonical_fix(text: str) -> str:
    """Canonical form of a fix set: ``"residual(every=2)+batchnorm"`` → sorted, '+'-joined."""
    if text is not None and not isinstance(text, str):
        raise ValueError(
            f"Argument `fix` must be a string such as 'batchnorm+residual(every=2)'. "
            f"Received: fix={shorten(repr(text))} (of type {type(text).__name__})"
        )
    text = (text or "none").strip().lower()
    if text in ("", "none", "baseline"):
        return "none"
    parts = []
    for token in text.split("+"):
        token = token.strip()
        try:
            name, kwargs = parse_spec(token)
        except ValueError:
            raise ValueError(f"Invalid fix {shorten(repr(token))}. Valid fixes: none, {', '.join(FIXES)}") from None
        if name not in FIXES:
            raise ValueError(
                f"Unknown fix {shorten(repr(name))}.{closest(name, list(FIXES))} Valid fixes: none, {', '.join(FIXES)}"
            )
        param = FIXES[name]
        if param is None:
            if kwargs:
                raise ValueError(f"Fix {name!r} takes no parameters. Received: {shorten(repr(token))}")
            parts.append(name)
            continue
        pname, default, _ = param
        # The registries' binding: an integer stays an integer (every=2.7 is
        # refused, not truncated), a float must be finite (norm=1e999 would be
        # stored as inf, which no canonical name can hold).
        value = {pname: default, **bind_params("fix", name, kwargs, {pname: default})}[pname]
        if name == "residual" and value < 1:
            raise ValueError(f"Fix 'residual' needs every >= 1. Received: every={value}")
        if name == "clipnorm" and not value > 0:
            raise ValueError(f"Fix 'clipnorm' needs norm > 0. Received: norm={value}")
        if name == "dropout" and not 0 < value < 1:
            raise ValueError(f"Fix 'dropout' needs 0 < rate < 1. Received: rate={value}")
        parts.append(f"{name}({pname}={value!r})")
    names = [p.split("(")[0] for p in parts]
    if len(set(names)) != len(names):
        raise ValueError(f"A fix appears twice in {shorten(repr(text))}.")
    norms = [n for n in names if n in _NORM_FIXES]
    if len(norms) > 1:
        raise ValueError(f"At most one normalization fix per run. Received: {'+'.join(norms)}")
    order = list(FIXES)
    return "+".join(sorted(parts, key=lambda p: order.index(p.split("(")[0])))


def fix_params(fix: str) -> dict:
    """{fix name: parameter value or None} of a canonical fix string."""
    if fix == "none":
        return {}
    out = {}
    for part in fix.split("+"):
        name, kwargs = parse_spec(part)
        out[name] = next(iter(kwargs.values())) if kwargs else None
    return out


def _bias_initializer_name(spec: str) -> str:
    """The canonical name of a bias initializer spec; one-line error naming the argument otherwise."""
    try:
        return models.initializers.get(spec).name
    except ValueError as e:
        # The registry's message names an "initializer"; say which argument it was.
        raise ValueError(f"Argument `bias_initializer`: {str(e).splitlines()[0]}") from None


# Widest hidden layer whose input-output Jacobians `bench.spectrum` computes exactly (a forward pass of
# a batch of this many copies, and one SVD per layer and example).
JACOBIAN_MAX_WIDTH = 1024

# Fixes whose skip connections make the hidden layers no single chain.
_BRANCHING_FIXES = ("residual",)


def jacobian_unsupported(arch: str, depth: int, width: int, fix: str = "none") -> str:
    """Why the Jacobian spectrum (`bench.spectrum`) cannot be measured on this MLP, or "" when it can."""
    if arch != "mlp":
        return f"arch={arch!r}: the Jacobian spectrum is measured on the MLP only"
    if depth < 2:
        return f"depth={depth}: J_l = ∂z_l/∂z_0 needs at least two hidden layers"
    if width > JACOBIAN_MAX_WIDTH:
        return f"width={width}: the full Jacobian is computed up to width {JACOBIAN_MAX_WIDTH}"
    branching = [f for f in _BRANCHING_FIXES if f in fix]
    if branching:
        return f"fix {branching[0]!r}: its skip connections make the hidden layers no single chain"
    return ""


@dataclass(frozen=True)
class RunConfig:
    """One benchmark run: architecture, training recipe, data and seed.

    With ``max_steps`` set, training takes exactly ``max_steps`` optimizer
    steps split into ``epochs`` evaluation periods (the data stream continues
    across periods); ``max_steps=0`` only measures at initialization.
    ``train_samples``/``test_samples`` take the first N examples.
    ``backend`` is the Keras backend the run trains on (`bench.backend`).
    ``jacobian_examples`` > 0 also measures, before training, the singular
    values of the hidden layers' Jacobians on that many training examples
    (`bench.spectrum`; an MLP without skip connections, width up to
    `JACOBIAN_MAX_WIDTH`).
    """

    arch: str = "mlp"
    depth: int = 20
    width: int = 128
    activation: str = "relu"
    initializer: str = "he_normal"
    fix: str = "none"
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    batch_size: int = 128
    epochs: int = 1
    max_steps: int | None = None
    dataset: str = "mnist"
    preprocessing: str = "scale"
    train_samples: int | None = None
    test_samples: int | None = None
    seed: int = 0
    log_every: int = 1
    act_every: int = 10
    bias_initializer: str = DEFAULT_BIAS_INITIALIZER
    backend: str = DEFAULT_BACKEND
    jacobian_examples: int = 0

    def __post_init__(self):
        def positive_int(name, allow_none=False, allow_zero=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, int) and not isinstance(v, bool) and (v > 0 or (allow_zero and v == 0))
            if not ok:
                kind = "a non-negative integer" if allow_zero else "a positive integer"
                raise ValueError(f"Argument `{name}` must be {kind}. Received: {name}={shorten(repr(v))}")

        def choice(name, choices):
            v = getattr(self, name)
            if v not in choices:
                raise ValueError(
                    f"Argument `{name}` must be one of {', '.join(choices)}. Received: {name}={shorten(repr(v))}"
                    + closest(str(v), list(choices))
                )

        # Names must be strings: a suite's `fix: [[batchnorm]]` is a list of
        # lists, and str() of it would be looked up as a name.
        names = ("arch", "activation", "initializer", "optimizer", "dataset", "preprocessing", "bias_initializer")
        for name in (*names, "backend"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise ValueError(
                    f"Argument `{name}` must be a string. Received: {name}={shorten(repr(v))} "
                    f"(of type {type(v).__name__})"
                )
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("arch", self.arch.lower())
        choice("arch", ARCHS)
        for name in ("depth", "width", "batch_size", "epochs", "log_every", "act_every"):
            positive_int(name)
        positive_int("max_steps", allow_none=True, allow_zero=True)
        positive_int("train_samples", allow_none=True)
        positive_int("test_samples", allow_none=True)
        positive_int("jacobian_examples", allow_zero=True)
        max_seed = SEED_LIMIT - 1
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= max_seed:
            raise ValueError(
                f"Argument `seed` must be an integer in [0, {max_seed}]. Received: seed={shorten(repr(self.seed))}"
            )
        lr = self.learning_rate
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not math.isfinite(lr)
            or not 0 < lr <= MAX_LEARNING_RATE
        ):
            raise ValueError(
                f"Argument `learning_rate` must be a finite number in (0, {MAX_LEARNING_RATE:g}]. "
                f"Received: learning_rate={shorten(repr(lr))}"
            )
        set_("learning_rate", float(lr))
        set_("optimizer", self.optimizer.lower())
        choice("optimizer", OPTIMIZERS)
        set_("preprocessing", self.preprocessing.lower())
        choice("preprocessing", PREPROCESSINGS)
        set_("backend", self.backend.strip().lower())
        choice("backend", BACKENDS)
        set_("activation", models.activations.get(self.activation).name)
        set_("initializer", models.initializers.get(self.initializer).name)
        set_("bias_initializer", _bias_initializer_name(self.bias_initializer))
        set_("fix", canonical_fix(self.fix))
        ds = self.dataset
        set_("dataset", ds if ds.startswith("tfds:") else ds.lower().replace("-", "_"))
        if not (
            self.dataset in ("mnist", "fashion_mnist", "gaussian") or re.fullmatch(r"tfds:[\w/.:-]+", self.dataset)
        ):
            raise ValueError(
                "Argument `dataset` must be one of mnist, fashion_mnist, gaussian, tfds:NAME. "
                f"Received: dataset={shorten(repr(ds))}"
            )
        if self.jacobian_examples:
            why = jacobian_unsupported(self.arch, self.depth, self.width, self.fix)
            if why:
                raise ValueError(f"Argument `jacobian_examples` cannot be measured here: {why}.")

    # ----------------------------------------------------------- conversions

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"Unknown RunConfig field {shorten(repr(unknown[0]))}.{closest(unknown[0], sorted(names))} "
                f"Valid fields: {', '.join(sorted(names))}"
            )
        return cls(**d)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @property
    def fixes(self) -> dict:
        return fix_params(self.fix)

    @property
    def run_id(self) -> str:
        identity = stable_identity(self.to_dict())
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
        readable = "-".join(
            slug(s)
            for s in (
                self.arch,
                f"d{self.depth}",
                f"w{self.width}",
                self.activation,
                self.initializer,
                self.fix,
                f"s{self.seed}",
                # Only a late field off its default is named: earlier run_ids stay as they were.
                *((self.backend,) if self.backend != DEFAULT_BACKEND else ()),
            )
        )
        return f"{readable}-{digest}"

    def model_kwargs(self) -> dict:
        """Keyword arguments of `models.build_model` for this config."""
        fixes = self.fixes
        norm = next((n for n in _NORM_FIXES if n in fixes), None)
        return dict(
            arch=self.arch,
            depth=self.depth,
            width=self.width,
            activation=self.activation,
            initializer=self.initializer,
            norm=norm,
            residual_every=int(fixes.get("residual") or 0),
            dropout=float(fixes.get("dropout") or 0.0),
            bias_initializer=self.bias_initializer,
            seed=self.seed,
        )


CONFIG_FIELDS = [f.name for f in dataclasses.fields(RunConfig)]

# A run of a model not built by vgbench (`bench.diagnose`): its `arch`, and
# the value of the fields that do not apply to it (activation, initializer).
CUSTOM_ARCH = "custom"
NOT_APPLICABLE = "n/a"
# Fields of such a run, beside the RunConfig fields, that tell what was
# trained: the model's name and its weights at step 0 (a short hash).
MODEL_FIELDS = ("model", "weights")

# Config fields that tell repetitions of one benchmark apart (their samples).
SAMPLE_FIELDS = ("seed",)
# Config fields that say how a run is measured rather than what is trained.
MEASUREMENT_FIELDS = ("log_every", "act_every", "jacobian_examples")


def benchmark_fields(columns) -> list[str]:
    """The config fields among `columns` that identify a benchmark: what is trained, not seed or cadence.

    Runs that agree on these are repetitions of one benchmark (the report's
    "pair", the comparer's "benchmark"). Diagnosed models of one's own
    (`bench.diagnose`) are also told apart by `MODEL_FIELDS`.
    """
    excluded = set(SAMPLE_FIELDS) | set(MEASUREMENT_FIELDS)
    present = set(columns)
    return [c for c in (*CONFIG_FIELDS, *MODEL_FIELDS) if c in present and c not in excluded]
