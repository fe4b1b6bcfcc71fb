"""Datasets: finding, reading, verifying and preparing MNIST-like data.

A benchmark result is only comparable with another if both were computed on
the same data, so every loaded dataset carries a checksum of its arrays and a
``standard`` flag saying whether they are the published ones. Loading never
silently substitutes data: a file that cannot be found, read or trusted raises
:class:`bench.errors.DataError` with a one-line message.

Sources, in the order they are tried:

- ``"mnist"``: the ``path`` argument; ``$VGBENCH_MNIST``; the Keras cache
  (``$KERAS_HOME/datasets/mnist.npz``, ``~/.keras`` when ``KERAS_HOME`` is
  unset); ``keras.datasets.mnist.load_data()``, which downloads.
- ``"fashion_mnist"`` (or ``"fashion-mnist"``): the ``path`` argument;
  ``$VGBENCH_FASHION_MNIST``; the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``); the Keras cache
  (``$KERAS_HOME/datasets/fashion-mnist/``); ``tfds.load("fashion_mnist")``
  from the local TFDS data directory.
- ``"tfds:NAME"``: any image-classification dataset already prepared in the
  local TFDS data directory (``path``, when given, is that directory).
- ``"gaussian"``: generated, not read: i.i.d. N(0, 1) "images" of MNIST's
  size (28 × 28) with random labels, from a fixed seed (`gaussian_dataset`).
  Inputs that meet the assumptions of mean-field and self-normalization
  results (zero mean, unit variance, independent components), for
  measurements at initialization; there is nothing in them to learn.

A path is either an ``.npz`` file in the Keras layout (``x_train``,
``y_train``, ``x_test``, ``y_test``) or a directory of the four original IDX
files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
gzipped).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import numbers
import os
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgbench.bench.errors import DataError
from vgbench.bench.utils import one_line

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")

DATASET_NAMES = ("mnist", "fashion_mnist", "gaussian", "tfds:NAME")
_ALIASES = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "fashion-mnist": "fashion_mnist",
    "gaussian": "gaussian",
}
_DISPLAY_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "gaussian": "Gaussian"}

# The generated Gaussian dataset: the claims' sample counts, MNIST's image size, a fixed seed.
GAUSSIAN_SHAPE = (28, 28)
GAUSSIAN_SIZES = {"train": 12800, "test": 2000}
GAUSSIAN_SEED = 0

PREPROCESSINGS = ("scale", "standardize")

MNIST_ENV = "VGBENCH_MNIST"
FASHION_MNIST_ENV = "VGBENCH_FASHION_MNIST"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

MNIST_HINT = (
    "MNIST not found: set VGBENCH_MNIST=/path/to/mnist.npz or pass --data PATH "
    "(the Keras layout: x_train, y_train, x_test, y_test)"
)
FASHION_MNIST_HINT = (
    "Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist`, "
    "or set VGBENCH_FASHION_MNIST=/path/to/dir or pass --data PATH "
    "(a directory of the IDX files, or an .npz in the Keras layout)"
)

# SHA-256 of each array's raw bytes, as `array_checksum` computes them. MNIST:
# the published files (see shared/data/MNIST.md). Fashion-MNIST: the original
# IDX files shipped by Debian's dataset-fashion-mnist (0.0~git20200523).
KNOWN_CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
        "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    },
    "fashion_mnist": {
        "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
        "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
        "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
        "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    },
}

_NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10}
# x_train's then x_test's shape in the published files.
_STANDARD_SHAPES = {
    "mnist": (60_000, 28, 28, 10_000, 28, 28),
    "fashion_mnist": (60_000, 28, 28, 10_000, 28, 28),
}
# Set to 1 to use a file that is refused as another dataset (`--allow-nonstandard-data`).
ALLOW_NONSTANDARD_ENV = "VGBENCH_ALLOW_NONSTANDARD_DATA"

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type codes (third byte of the magic number); multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class NonStandardDataWarning(UserWarning):
    """The loaded arrays differ from the published dataset's."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split of labelled images, with its provenance.

    ``eq=False`` keeps identity comparison and hashing: comparing the arrays
    elementwise has no single truth value; compare ``checksum`` instead.

    Attributes:
        name: Canonical dataset name: ``"mnist"``, ``"fashion_mnist"`` or
            ``"tfds:NAME"``.
        x_train: Training images, read-only ``uint8`` of shape ``(N, H, W)``
            (grayscale) or ``(N, H, W, C)``.
        y_train: Training labels, read-only integers in ``[0, num_classes)``
            (``uint8`` when there are at most 256 classes, whatever the file
            stored, so the checksum identifies the values, not the container).
        x_test: Test images, like ``x_train``.
        y_test: Test labels, like ``y_train``.
        num_classes: Number of label classes.
        source: Where the arrays came from: a file or directory path,
            ``"keras-cache:<path>"``, ``"keras-download"`` or ``"tfds:<name>"``.
        checksums: SHA-256 of each array's raw bytes, keyed by ``ARRAY_KEYS``.
        checksum: One SHA-256 over the four array checksums.
        standard: Whether every array matches ``KNOWN_CHECKSUMS`` for this
            dataset (always ``False`` for datasets with no known checksums).
        nonstandard_allowed: Whether the file would have been refused as
            another dataset and was used because the user asked for it.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    source: str
    checksums: Mapping[str, str]
    checksum: str
    standard: bool
    nonstandard_allowed: bool = False

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image: ``(H, W)`` or ``(H, W, C)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])


@dataclass(frozen=True, eq=False)
class Arrays:
    """Model-ready arrays produced by :func:`prepare`.

    Attributes:
        x_train: ``float32`` inputs, ``(N, H*W*C)`` or ``(N, H, W, C)``.
        y_train: ``int32`` labels of shape ``(N,)``.
        x_test: ``float32`` inputs shaped like ``x_train``.
        y_test: ``int32`` labels of shape ``(M,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one model input."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def array_checksum(a: np.ndarray) -> str:
    """Returns the SHA-256 hex digest of an array's raw (C-order) bytes."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def data_checksum(checksums: Mapping[str, str]) -> str:
    """Combines the four per-array checksums into one.

    Args:
        checksums: SHA-256 hex digests keyed by ``x_train``, ``y_train``,
            ``x_test`` and ``y_test``.

    Returns:
        The SHA-256 hex digest of ``"key=digest\\n"`` lines in ``ARRAY_KEYS``
        order, so it does not depend on the mapping's order.
    """
    text = "".join(f"{key}={checksums[key]}\n" for key in ARRAY_KEYS)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def describe(ds: Dataset) -> dict:
    """Returns the dataset's provenance as a JSON-serialisable dict.

    ``nonstandard_allowed: true`` is added when the data was used only because
    the user asked for it (``--allow-nonstandard-data``).
    """
    info = {
        "name": ds.name,
        "source": ds.source,
        "checksum": ds.checksum,
        "standard": ds.standard,
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "image_shape": list(ds.image_shape),
        "num_classes": ds.num_classes,
    }
    if ds.nonstandard_allowed:
        info["nonstandard_allowed"] = True
    return info


def load_dataset(
    name: str = "mnist", path: str | os.PathLike | None = None, *, allow_nonstandard: bool | None = None
) -> Dataset:
    """Finds, reads and verifies a dataset.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"`` (or ``"fashion-mnist"``), or
            ``"tfds:NAME"`` for a dataset prepared in the local TFDS data
            directory.
        path: For MNIST and Fashion-MNIST, an ``.npz`` file in the Keras layout
            or a directory of IDX files, used instead of searching. For
            ``tfds:NAME``, the TFDS data directory.
        allow_nonstandard: Use a file that holds another published dataset,
            or one of the published layout with other contents, instead of
            refusing it. None reads ``$VGBENCH_ALLOW_NONSTANDARD_DATA``
            (``1`` allows), so that worker processes follow the command line.

    Returns:
        The verified :class:`Dataset`. Arrays that differ from the published
        ones in size (a subset, say) are accepted with a
        :class:`NonStandardDataWarning` and ``standard=False``. Inside
        :func:`reusing`, a dataset given there is returned as is.

    Raises:
        DataError: The name is unknown, or the data cannot be found, read or
            trusted.
    """
    if allow_nonstandard is None:
        allow_nonstandard = os.environ.get(ALLOW_NONSTANDARD_ENV, "").strip().lower() in ("1", "true", "yes")
    allow = bool(allow_nonstandard)
    if not isinstance(name, str):
        raise DataError(f"Invalid dataset name {name!r}; expected one of: {', '.join(DATASET_NAMES)}")
    reused = _REUSED.get((name, None if path is None else os.fspath(path)))
    if reused is not None:
        return reused
    key = name.strip()
    if key.lower().startswith("tfds:"):
        tfds_name = key[len("tfds:") :].strip()
        if not tfds_name:
            raise DataError(f"Invalid dataset name {name!r}: missing the TFDS name after 'tfds:' (e.g. tfds:mnist)")
        return _load_tfds(tfds_name, data_dir=path)
    canonical = _ALIASES.get(key.lower())
    if canonical is None:
        raise DataError(
            f"Unknown dataset name {name!r}; expected one of: mnist, fashion_mnist (or fashion-mnist), gaussian, "
            "tfds:NAME"
        )
    if canonical == "gaussian":
        return gaussian_dataset()
    if canonical == "mnist":
        return _load_mnist(path, allow)
    return _load_fashion_mnist(path, allow)


def gaussian_dataset() -> Dataset:
    """The generated ``"gaussian"`` dataset: i.i.d. N(0, 1) float32 images of MNIST's size, random labels.

    The same arrays (and checksum) on every call and machine: NumPy's
    ``default_rng(GAUSSIAN_SEED)``, `GAUSSIAN_SIZES` examples. The labels are
    uniform over 10 classes and independent of the images. `prepare` leaves
    float images unscaled, so ``standardize`` keeps them at mean 0 and
    variance 1 (to sampling precision).
    """
    rng = np.random.default_rng(GAUSSIAN_SEED)
    n_train, n_test = GAUSSIAN_SIZES["train"], GAUSSIAN_SIZES["test"]
    arrays = {
        "x_train": rng.standard_normal((n_train, *GAUSSIAN_SHAPE), dtype=np.float32),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.standard_normal((n_test, *GAUSSIAN_SHAPE), dtype=np.float32),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    checksums = {k: array_checksum(v) for k, v in arrays.items()}
    return Dataset(
        name="gaussian",
        **{k: _frozen(v) for k, v in arrays.items()},
        num_classes=10,
        source=f"generated:numpy.random.default_rng({GAUSSIAN_SEED}).standard_normal",
        checksums=checksums,
        checksum=data_checksum(checksums),
        standard=True,
    )


# (name, path) -> Dataset, filled only inside `reusing`.
_REUSED: dict = {}


@contextlib.contextmanager
def reusing(datasets: Mapping[tuple[str, str | None], Dataset]):
    """Makes `load_dataset` return already loaded datasets within the block.

    A command loads and checks its data before it starts any work; code it
    then calls that loads the same ``(name, path)`` again gets those arrays
    instead of reading and checksumming the file a second time.

    Args:
        datasets: ``(name, path) -> Dataset``, ``path`` as given to
            `load_dataset` (``None`` for the default sources).
    """
    saved = dict(_REUSED)
    _REUSED.update({(n, None if p is None else os.fspath(p)): ds for (n, p), ds in datasets.items()})
    try:
        yield
    finally:
        _REUSED.clear()
        _REUSED.update(saved)


def check_samples(ds: Dataset, train_samples: int | None, test_samples: int | None) -> tuple[int, int]:
    """Checks subset sizes against a dataset; returns the numbers of examples used.

    Raises:
        DataError: A count that is not a positive integer or exceeds what the
            dataset has; the message names the count and the valid range.
    """
    return (
        _check_samples("train_samples", train_samples, ds.n_train, ds.name),
        _check_samples("test_samples", test_samples, ds.n_test, ds.name),
    )


def prepare(
    ds: Dataset,
    *,
    preprocessing: str = "scale",
    flatten: bool = True,
    train_samples: int | None = None,
    test_samples: int | None = None,
) -> Arrays:
    """Turns a dataset into model-ready float32 inputs and int32 labels.

    Subsets are the first ``train_samples`` / ``test_samples`` examples, not a
    random draw, so a subset is the same on every machine and its provenance is
    just a count. MNIST and Fashion-MNIST are stored in their original order,
    which is not sorted by label, so a prefix keeps every class.

    Args:
        ds: The dataset from :func:`load_dataset`.
        preprocessing: ``"scale"`` maps pixels to ``[0, 1]`` (``x / 255``);
            ``"standardize"`` then subtracts the mean and divides by the
            standard deviation, two scalars computed over the (subset)
            training images and applied to both splits.
        flatten: Whether to reshape each image to a vector ``(H*W*C,)``;
            otherwise images are ``(H, W, C)``, with ``C=1`` for grayscale.
        train_samples: Number of training examples to keep (all when None).
        test_samples: Number of test examples to keep (all when None).

    Returns:
        The prepared :class:`Arrays`.

    Raises:
        DataError: An unknown preprocessing, a sample count that is not a
            positive integer or exceeds what the dataset has, or constant
            training images with ``"standardize"``.
    """
    if preprocessing not in PREPROCESSINGS:
        raise DataError(f"Unknown preprocessing {preprocessing!r}; expected one of: {', '.join(PREPROCESSINGS)}")
    n_train, n_test = check_samples(ds, train_samples, test_samples)

    # Pixels (integers) are scaled to [0, 1]; generated float images (`gaussian_dataset`) are left as they are.
    scale = np.float32(255) if np.issubdtype(ds.x_train.dtype, np.integer) else np.float32(1)
    x_train = ds.x_train[:n_train].astype(np.float32) / scale
    x_test = ds.x_test[:n_test].astype(np.float32) / scale
    if preprocessing == "standardize":
        # Accumulating in float64 keeps the mean exact over 47M pixels.
        mean = float(x_train.mean(dtype=np.float64))
        std = float(x_train.std(dtype=np.float64))
        if std == 0.0:
            raise DataError(
                f"Cannot standardize {ds.name}: the {n_train} training images are constant (std 0); "
                "use preprocessing='scale'"
            )
        x_train = ((x_train - mean) / std).astype(np.float32)
        x_test = ((x_test - mean) / std).astype(np.float32)

    if flatten:
        x_train = x_train.reshape(len(x_train), -1)
        x_test = x_test.reshape(len(x_test), -1)
    elif x_train.ndim == 3:
        x_train = x_train[..., np.newaxis]
        x_test = x_test[..., np.newaxis]

    return Arrays(
        x_train=x_train,
        y_train=ds.y_train[:n_train].astype(np.int32),
        x_test=x_test,
        y_test=ds.y_test[:n_test].astype(np.int32),
    )


def make_tf_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    cache: bool = True,
    drop_remainder: bool = False,
):
    """Builds the input pipeline for one split.

    With ``shuffle=True`` the order changes every epoch, yet two pipelines
    built with the same ``seed`` produce the same sequence of batches, epoch
    after epoch, so runs are reproducible.

    Args:
        x: Inputs, first axis the examples.
        y: Labels, one per example.
        batch_size: Examples per batch.
        shuffle: Whether to shuffle (over the whole split) every epoch.
        seed: Shuffle seed.
        cache: Whether to cache the examples in memory after the first epoch.
        drop_remainder: Whether to drop the last, smaller batch.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` batches.

    Raises:
        DataError: ``batch_size`` is not a positive integer, or ``x`` and
            ``y`` differ in length.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise DataError(f"Invalid batch_size={batch_size!r}; expected a positive integer")
    if len(x) != len(y):
        raise DataError(f"Inputs and labels differ in length: {len(x)} inputs, {len(y)} labels")

    import tensorflow as tf  # Deferred: loading and verifying data needs no TensorFlow.

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (gzipped or plain) into a native-endian array.

    Args:
        path: The file; gzip is recognised by its content, not its name.

    Returns:
        The array, with the shape the header declares.

    Raises:
        DataError: The file cannot be read, is not valid gzip, has a bad magic
            number, or its size does not match its header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError as exc:
        raise DataError(f"IDX file not found: {path}") from exc
    # BadGzipFile is an OSError: test it before the other OSErrors (permission
    # denied, a directory), which say nothing about the content.
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"Cannot read IDX file {path}: corrupt or truncated gzip ({one_line(exc)})") from exc
    except OSError as exc:
        raise DataError(f"Cannot read IDX file '{path}': {one_line(exc)}") from exc

    if len(raw) < 4:
        raise DataError(f"Corrupt IDX file {path}: {len(raw)} bytes, shorter than the 4-byte magic number")
    zeros, type_code, ndim = raw[0:2], raw[2], raw[3]
    if zeros != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"Corrupt IDX file {path}: bad magic number 0x{raw[:4].hex()} (expected 0x0000TTDD with a known type TT)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"Truncated IDX file {path}: {len(raw)} bytes, shorter than its {header}-byte header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "Truncated" if len(raw) < expected else "Corrupt"
        raise DataError(
            f"{what} IDX file {path}: {len(raw)} bytes, but its header {dims} of {dtype.name} needs {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


# --- Sources -----------------------------------------------------------------


def _keras_home() -> Path:
    # Mirrors keras.utils.get_file, so a file Keras downloaded is found here.
    home = os.environ.get("KERAS_HOME")
    return Path(home) if home else Path.home() / ".keras"


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var, "").strip()
    return Path(value).expanduser() if value else None


def _from_user(name: str, path, env_var: str, hint: str, allow: bool) -> Dataset | None:
    """The dataset at the path the user gave (argument, else environment), or None."""
    if path is not None:
        return _from_path(name, Path(path).expanduser(), what=None, hint=hint, allow=allow)
    env = _env_path(env_var)
    if env is not None:
        return _from_path(name, env, what=f"${env_var}", hint=hint, allow=allow)
    return None


def _load_mnist(path, allow: bool) -> Dataset:
    given = _from_user("mnist", path, MNIST_ENV, MNIST_HINT, allow)
    if given is not None:
        return given
    cached = _keras_home() / "datasets" / "mnist.npz"
    if cached.is_file():
        # Read directly: keras' load_data would check the zip container's hash
        # and re-download a valid file that was written by another tool.
        arrays = _read_npz(cached)
        return _build("mnist", arrays, source=f"keras-cache:{cached}", where=str(cached), allow=allow)
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as exc:  # Any download failure means the same thing to the user.
        raise DataError(MNIST_HINT) from exc
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _build("mnist", arrays, source="keras-download", where="the Keras download", allow=allow)


def _load_fashion_mnist(path, allow: bool) -> Dataset:
    given = _from_user("fashion_mnist", path, FASHION_MNIST_ENV, FASHION_MNIST_HINT, allow)
    if given is not None:
        return given
    for directory in (FASHION_MNIST_DEBIAN_DIR, _keras_home() / "datasets" / "fashion-mnist"):
        if directory.is_dir() and all(_find_idx(directory, stem) for stem in IDX_FILES.values()):
            arrays = _read_idx_dir(directory)
            return _build("fashion_mnist", arrays, source=str(directory), where=str(directory), allow=allow)
    try:
        arrays, _ = _read_tfds("fashion_mnist", data_dir=None)
    except DataError as exc:
        raise DataError(FASHION_MNIST_HINT) from exc
    return _build("fashion_mnist", arrays, source="tfds:fashion_mnist", where="tfds:fashion_mnist", allow=allow)


def _from_path(name: str, path: Path, *, what: str | None, hint: str, allow: bool) -> Dataset:
    path = Path(os.path.abspath(path))  # Normalises "..", keeps symlinks as given.
    if path.is_dir():
        arrays = _read_idx_dir(path)
    elif path.is_file():
        arrays = _read_npz(path)
    else:
        # The hint's first words say what was not found; name the path instead.
        advice = hint.split(": ", 1)[1]
        origin = f" (from {what})" if what else ""
        raise DataError(f"{_DISPLAY_NAMES[name]} not found at {path}{origin}: {advice}")
    return _build(name, arrays, source=str(path), where=str(path), allow=allow)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # Truncation and corruption surface as any of these, on opening the zip or
    # only when a member is read, so both are guarded.
    errors = (zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error)
    try:
        f = np.load(path, allow_pickle=False)
    except errors as exc:
        raise DataError(f"Cannot read {path}: not a valid .npz, or truncated/corrupt ({one_line(exc)})") from exc
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz with the keys {', '.join(ARRAY_KEYS)}")
    with f:
        missing = [k for k in ARRAY_KEYS if k not in f.files]
        if missing:
            raise DataError(f"{path} is missing {', '.join(missing)}; an .npz needs the keys {', '.join(ARRAY_KEYS)}")
        for key in ARRAY_KEYS:
            _check_npy_header(path, f.zip, key)
        try:
            return {k: f[k] for k in ARRAY_KEYS}
        except errors as exc:
            raise DataError(f"Cannot read {path}: truncated or corrupt .npz ({one_line(exc)})") from exc


def _check_npy_header(path: Path, archive: zipfile.ZipFile, key: str) -> None:
    """Checks one member's declared shape, dtype and size before it is read.

    NumPy allocates what a header declares before reading the data, so a
    small file that declares a 730 GiB array would end in a MemoryError;
    the header alone tells that it is not an image or label array, or that
    the file does not hold the bytes it declares.
    """
    name = f"{key}.npy"
    try:
        info = archive.getinfo(name)
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(member)
            header_bytes = member.tell()
    except KeyError:  # stored without the .npy suffix: np.load reads it as is, and _validate checks it
        return
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"Cannot read {path}: {key} has a corrupt array header ({one_line(exc)})") from exc
    _check_layout(key, shape, dtype, where=str(path))
    declared = math.prod(shape) * dtype.itemsize
    stored = info.file_size - header_bytes
    if declared != stored:
        raise DataError(
            f"Corrupt {path}: {key} declares shape {shape} of {dtype} ({_human_bytes(declared)}) "
            f"but holds {_human_bytes(stored)}"
        )


def _check_layout(key: str, shape: tuple[int, ...], dtype: np.dtype, *, where: str) -> None:
    """Checks the rank and dtype of an image (``x_*``) or label (``y_*``) array."""
    if key.startswith("x_"):
        if len(shape) not in (3, 4):
            raise DataError(f"{key} in {where} has shape {shape}; expected (N, H, W) or (N, H, W, C)")
        if dtype != np.uint8:
            raise DataError(f"{key} in {where} has dtype {dtype}; expected uint8 pixels in [0, 255]")
    else:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise DataError(f"{key} in {where} has shape {shape}; expected (N,) integer labels")
        if not np.issubdtype(dtype, np.integer):
            raise DataError(f"{key} in {where} has dtype {dtype}; expected integer labels")


def _human_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_dir(directory: Path) -> dict[str, np.ndarray]:
    found = {key: _find_idx(directory, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, p in found.items() if p is None]
    if missing:
        raise DataError(
            f"{directory} is missing the IDX file(s) {', '.join(missing)} (plain or .gz); "
            f"expected {', '.join(IDX_FILES.values())}"
        )
    return {key: read_idx(p) for key, p in found.items()}


def _load_tfds(name: str, data_dir) -> Dataset:
    arrays, num_classes = _read_tfds(name, data_dir)
    return _build(f"tfds:{name}", arrays, source=f"tfds:{name}", where=f"tfds:{name}", num_classes=num_classes)


def _read_tfds(name: str, data_dir) -> tuple[dict[str, np.ndarray], int]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise DataError(f"Cannot load tfds:{name}: tensorflow-datasets is not installed") from exc
    try:
        (train, test), info = tfds.load(
            name,
            split=["train", "test"],
            as_supervised=True,
            batch_size=-1,
            download=False,
            with_info=True,
            data_dir=None if data_dir is None else os.fspath(data_dir),
        )
        x_train, y_train = tfds.as_numpy(train)
        x_test, y_test = tfds.as_numpy(test)
        label_key = info.supervised_keys[1]
        num_classes = int(info.features[label_key].num_classes)
    except Exception as exc:  # TFDS raises many unrelated types for "not here".
        raise DataError(
            f"TFDS dataset {name!r} is not available locally with train and test splits "
            f"({one_line(exc)}); prepare it with tfds.builder({name!r}).download_and_prepare() where there is network"
        ) from exc
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}, num_classes


# --- Verification --------------------------------------------------------------


def _build(
    name: str,
    arrays: Mapping[str, np.ndarray],
    *,
    source: str,
    where: str,
    num_classes: int | None = None,
    allow: bool = False,
) -> Dataset:
    base = name[len("tfds:") :] if name.startswith("tfds:") else name
    if num_classes is None:
        num_classes = _NUM_CLASSES[base]
    arrays = _validate(arrays, where=where, num_classes=num_classes)
    checksums = {key: array_checksum(a) for key, a in arrays.items()}
    checksum = data_checksum(checksums)
    known = KNOWN_CHECKSUMS.get(base)
    standard = known is not None and all(checksums[k] == known[k] for k in ARRAY_KEYS)
    if known is not None and not standard and not allow:
        _refuse_impostor(base, arrays, checksums, checksum, where)
    if known is not None and not standard:
        warnings.warn(
            f"{where} is not the standard {_DISPLAY_NAMES[base]} (checksums differ); "
            f"results will record checksum {checksum}",
            NonStandardDataWarning,
            stacklevel=3,
        )
    return Dataset(
        name=name,
        num_classes=num_classes,
        source=source,
        checksums=checksums,
        checksum=checksum,
        standard=standard,
        nonstandard_allowed=bool(allow and known is not None and not standard),
        **arrays,
    )


def _refuse_impostor(base: str, arrays, checksums, checksum: str, where: str) -> None:
    """Refuses a file that is another standard dataset, or a same-sized stand-in for this one.

    A subset (fewer examples, or other image sizes) is a deliberate choice and
    is only warned about. But a file that holds another published dataset, or
    one with exactly the published layout and other contents, would be
    benchmarked under the wrong name: that takes an explicit request.
    """
    display = _DISPLAY_NAMES[base]
    expected = data_checksum(KNOWN_CHECKSUMS[base])
    found = f"found {checksum[:16]}…"
    other = next(
        (
            name
            for name, known in KNOWN_CHECKSUMS.items()
            if name != base and any(checksums[k] == known[k] for k in ARRAY_KEYS)
        ),
        None,
    )
    if other is not None:
        what = f"{where} holds {_DISPLAY_NAMES[other]}, not {display}"
        if checksum == data_checksum(KNOWN_CHECKSUMS[other]):
            found += f" ({_DISPLAY_NAMES[other]}'s)"
    elif tuple(arrays["x_train"].shape) + tuple(arrays["x_test"].shape) == _STANDARD_SHAPES[base]:
        what = f"{where} has the layout of {display} but other contents"
    else:
        return
    raise DataError(
        f"{what}: expected checksum {expected[:16]}…, {found}; pass --allow-nonstandard-data "
        f"(or set {ALLOW_NONSTANDARD_ENV}=1) to use it as {base} anyway"
    )


def _validate(arrays: Mapping[str, np.ndarray], *, where: str, num_classes: int) -> dict[str, np.ndarray]:
    """Checks shapes, dtypes and label ranges; returns canonical read-only arrays."""
    out = {}
    for split in ("train", "test"):
        x = np.asarray(arrays[f"x_{split}"])
        y = np.asarray(arrays[f"y_{split}"])
        _check_layout(f"x_{split}", x.shape, x.dtype, where=where)
        _check_layout(f"y_{split}", y.shape, y.dtype, where=where)
        if x.ndim == 4 and x.shape[-1] == 1:
            # One layout for grayscale whatever the source, so TFDS' (N, H, W, 1)
            # and the Keras (N, H, W) files give the same image_shape.
            x = x[..., 0]
        if y.ndim == 2:
            y = y[:, 0]
        if len(x) == 0:
            raise DataError(f"x_{split} in {where} is empty; expected at least one example")
        if len(x) != len(y):
            raise DataError(
                f"{where} has {len(x)} x_{split} images but {len(y)} y_{split} labels; expected equal counts"
            )
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise DataError(
                f"y_{split} in {where} has label {bad} outside [0, {num_classes}); "
                f"expected class indices 0..{num_classes - 1}"
            )
        label_dtype = np.uint8 if num_classes <= 256 else np.int32
        out[f"x_{split}"] = _frozen(x)
        out[f"y_{split}"] = _frozen(y.astype(label_dtype, copy=False))
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise DataError(
            f"{where} has train images of shape {out['x_train'].shape[1:]} but test images of shape "
            f"{out['x_test'].shape[1:]}; expected the same image shape"
        )
    return {key: out[key] for key in ARRAY_KEYS}


def _frozen(a: np.ndarray) -> np.ndarray:
    # Read-only, so the arrays cannot drift from the checksum recorded with them.
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def check_finite(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuses arrays holding NaN or infinity: a model fed them measures nothing but its own divergence.

    Raises:
        DataError: naming the first such array, its count of non-finite values and its size.
    """
    for key, a in arrays.items():
        a = np.asarray(a)
        if not np.issubdtype(a.dtype, np.inexact):  # integers and booleans are always finite
            continue
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise DataError(
                f"{key} of {where} has {bad:,} non-finite values (NaN or infinity) among its {a.size:,}; "
                "expected finite numbers"
            )


def _check_samples(arg: str, value, available: int, name: str) -> int:
    if value is None:
        return available
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise DataError(f"Invalid {arg}={value!r}; expected a positive integer (at most {available} for {name})")
    if value > available:
        split = "training" if arg.startswith("train") else "test"
        raise DataError(f"{arg}={value} exceeds the {available} {split} examples in {name}; expected 1..{available}")
    return int(value)
