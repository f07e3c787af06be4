"""Datasets for trlsim: IDX readers (MNIST, Fashion-MNIST) and the embedded digits.

Every loader returns a :class:`Dataset` whose inputs are flattened, normalised
``float32`` rows and whose labels are ``int64``, as the TRL paper prepares MNIST
(section 4 of the trlsim specification): pixels scaled to [0, 1], then
standardised with the dataset's usual mean and standard deviation.

Loaded datasets are cached in-process, so repeated loads (tests, sweeps) cost
nothing. Cached arrays are read-only; copy them before changing them.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import os
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "DataError",
    "Dataset",
    "clear_cache",
    "load_dataset",
    "load_digits_dataset",
    "load_idx_dataset",
    "read_idx",
    "resolve_data_path",
]

#: Names accepted by :func:`load_dataset`.
DATASETS = ("digits", "mnist", "fashion-mnist")

#: Environment variable naming a folder that holds the IDX datasets.
DATA_ENV_VAR = "TRLSIM_DATA"

#: Mean and standard deviation of pixel/255 over each training set.
IDX_NORMALISATION = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}

#: Folders searched last, after the explicit path and the environment variable.
SYSTEM_DATA_DIRS = {
    "mnist": (),
    # Debian package dataset-fashion-mnist
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

#: The four IDX files of a dataset folder, by role, without the ``.gz`` suffix.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

IDX_N_CLASSES = 10

_INSTALL_HINTS = {
    "fashion-mnist": (
        " On Debian or Ubuntu, apt-get install dataset-fashion-mnist puts it in "
        "/usr/share/datasets/fashion-mnist."
    ),
}

# IDX type codes; all multi-byte values are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_TYPE_NAMES = {
    0x08: "uint8",
    0x09: "int8",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_GZIP_MAGIC = b"\x1f\x8b"
_DIGITS_RESOURCE = ("datasets", "uci_digits.csv.gz")
_DIGITS_TEST_EVERY = 5
_CACHE_SIZE = 4

_cache: dict[tuple, Dataset] = {}


class DataError(ValueError):
    """A dataset is missing, malformed or asked for in a way that cannot work."""


@dataclasses.dataclass
class Dataset:
    """A classification dataset split into train and test sets.

    Parameters
    ----------
    name : str
        Dataset name, one of :data:`DATASETS` for the built-in loaders.
    train_x : np.ndarray
        Training inputs, ``float32``, shape ``(n_train, n_features)``,
        already normalised.
    train_y : np.ndarray
        Training labels, ``int64``, shape ``(n_train,)``, in ``[0, n_classes)``.
    test_x : np.ndarray
        Test inputs, ``float32``, shape ``(n_test, n_features)``.
    test_y : np.ndarray
        Test labels, ``int64``, shape ``(n_test,)``.
    image_shape : tuple of int
        ``(rows, columns)`` of one image; ``rows * columns == n_features``.
    n_classes : int
        Number of classes.

    Notes
    -----
    Arrays returned by the loaders are read-only because they are shared with
    the in-process cache.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    image_shape: tuple[int, int]
    n_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x = getattr(self, f"{split}_x")
            y = getattr(self, f"{split}_y")
            if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"dataset {self.name!r}: {split}_x must be (N, n_features) and "
                    f"{split}_y (N,), got {x.shape} and {y.shape}"
                )
        if self.train_x.shape[1] != self.test_x.shape[1]:
            raise ValueError(
                f"dataset {self.name!r}: train and test rows differ in length "
                f"({self.train_x.shape[1]} and {self.test_x.shape[1]})"
            )
        self.image_shape = tuple(int(n) for n in self.image_shape)
        if int(np.prod(self.image_shape)) != self.train_x.shape[1]:
            raise ValueError(
                f"dataset {self.name!r}: image_shape {self.image_shape} does not "
                f"match {self.train_x.shape[1]} features"
            )

    @property
    def n_features(self) -> int:
        """Length of one input row."""
        return self.train_x.shape[1]

    @property
    def n_train(self) -> int:
        """Number of training samples."""
        return self.train_x.shape[0]

    @property
    def n_test(self) -> int:
        """Number of test samples."""
        return self.test_x.shape[0]


def clear_cache() -> None:
    """Forget every dataset loaded in this process."""
    _cache.clear()


def _idx_format_help() -> str:
    return (
        "expected 0x00000803 (2051, 3-D uint8 images) or 0x00000801 (2049, 1-D "
        "uint8 labels); in general an IDX magic number is two zero bytes, a type "
        "code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, "
        "0x0E float64) and the number of dimensions"
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw.

    Compression is detected from the gzip magic bytes, not from the file name.

    Parameters
    ----------
    path : str or path-like
        The file to read.

    Returns
    -------
    np.ndarray
        A writable array in native byte order, with the shape and type the
        header declares (``uint8`` for MNIST).

    Raises
    ------
    DataError
        If the file is missing or unreadable, the gzip stream is corrupt, the
        header is short or has a wrong magic number, or the payload is shorter
        or longer than the header declares.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise DataError(f"{path}: {what}; expected an IDX file (raw or gzipped)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc})") from exc

    compressed = raw[:2] == _GZIP_MAGIC
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"{path}: corrupt gzip data ({exc}); the file is damaged or "
                "truncated, fetch a fresh copy"
            ) from exc
    where = f"{path}" + (" (after gunzip)" if compressed else "")

    if len(raw) < 4:
        raise DataError(
            f"{where}: {len(raw)} bytes, too short for an IDX header (at least 4 "
            "bytes: magic number, then 4 bytes per dimension)"
        )
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise DataError(
            f"{where}: not an IDX file, magic number 0x{magic:08X} ({magic}); "
            + _idx_format_help()
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{where}: truncated IDX header: {ndim} dimensions need a "
            f"{header_size}-byte header, but the file has {len(raw)} bytes"
        )

    shape = tuple(
        int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)
    )
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    actual = len(raw) - header_size
    declared = (
        f"the header declares {' x '.join(map(str, shape))} "
        f"{_IDX_TYPE_NAMES[type_code]} values ({expected} bytes of data after the "
        f"{header_size}-byte header)"
    )
    if actual < expected:
        raise DataError(
            f"{where}: truncated file: {declared}, but only {actual} follow"
        )
    if actual > expected:
        raise DataError(
            f"{where}: {actual - expected} unexpected trailing bytes: {declared}, "
            f"but {actual} follow"
        )

    data = np.frombuffer(
        raw, dtype=dtype, count=expected // dtype.itemsize, offset=header_size
    )
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _idx_paths(folder: Path) -> dict[str, Path]:
    paths = {}
    for role, stem in IDX_FILES.items():
        found = _find_idx_file(folder, stem)
        if found is None:
            raise DataError(
                f"{folder}: missing {stem}: tried {stem}.gz and {stem} in {folder}"
            )
        paths[role] = found
    return paths


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; valid names are {', '.join(DATASETS)}"
        )


def _check_idx_array(path: Path, array: np.ndarray, ndim: int, magic: int) -> None:
    if array.ndim != ndim or array.dtype != np.uint8:
        kind = "images" if ndim == 3 else "labels"
        raise DataError(
            f"{path}: expected {ndim}-D uint8 {kind} (IDX magic 0x{magic:08X}, "
            f"{magic}), found a {array.ndim}-D {array.dtype} array of shape "
            f"{array.shape}"
        )


def _freeze(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.flags.writeable = False


def load_idx_dataset(folder: str | os.PathLike, name: str) -> Dataset:
    """Load MNIST or Fashion-MNIST from a folder of IDX files.

    The folder must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each gzipped
    (``.gz``, tried first) or raw. Pixels are scaled to [0, 1], standardised with
    the constants of :data:`IDX_NORMALISATION` and flattened.

    Parameters
    ----------
    folder : str or path-like
        Folder holding the four files.
    name : {"mnist", "fashion-mnist"}
        Which dataset the folder holds; chooses the normalisation constants.

    Returns
    -------
    Dataset
        With read-only arrays shared with the in-process cache.

    Raises
    ------
    DataError
        If a file is missing or malformed, image and label counts differ, the
        train and test image sizes differ or a label is out of range.
    """
    if name not in IDX_NORMALISATION:
        raise DataError(
            f"{name!r} is not an IDX dataset; valid names are "
            f"{', '.join(IDX_NORMALISATION)}"
        )
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected the {name} IDX files")
    paths = _idx_paths(folder)

    # File identity is part of the key so that a rewritten file is read again.
    stats = tuple(
        (p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in paths.values()
    )
    key = ("idx", str(folder), name, stats)
    if key in _cache:
        return dataclasses.replace(_cache[key])

    mean, std = IDX_NORMALISATION[name]
    splits = {}
    image_shape = None
    for split in ("train", "test"):
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(images_path)
        labels = read_idx(labels_path)
        _check_idx_array(images_path, images, 3, 2051)
        _check_idx_array(labels_path, labels, 1, 2049)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{split} image and label counts differ: {images_path} holds "
                f"{images.shape[0]} images, {labels_path} holds {labels.shape[0]} "
                "labels"
            )
        if image_shape is None:
            image_shape = images.shape[1:]
        elif images.shape[1:] != image_shape:
            raise DataError(
                f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                f"but the training images are {image_shape[0]}x{image_shape[1]}"
            )
        if labels.size and labels.max() >= IDX_N_CLASSES:
            bad = int(np.argmax(labels >= IDX_N_CLASSES))
            raise DataError(
                f"{labels_path}: label {labels[bad]} at index {bad} is out of range; "
                f"{name} labels run from 0 to {IDX_N_CLASSES - 1}"
            )

        x = images.reshape(images.shape[0], -1).astype(np.float32)
        x /= 255.0
        x -= mean
        x /= std
        y = labels.astype(np.int64)
        _freeze(x, y)
        splits[split] = (x, y)

    dataset = Dataset(
        name=name,
        train_x=splits["train"][0],
        train_y=splits["train"][1],
        test_x=splits["test"][0],
        test_y=splits["test"][1],
        image_shape=image_shape,
        n_classes=IDX_N_CLASSES,
    )
    _remember(key, dataset)
    logger.debug("loaded %s from %s", name, folder)
    return dataclasses.replace(dataset)


def _remember(key: tuple, dataset: Dataset) -> None:
    while len(_cache) >= _CACHE_SIZE:
        del _cache[next(iter(_cache))]
    _cache[key] = dataset


def _digits_resource():
    return (
        resources.files("trlsim")
        .joinpath(_DIGITS_RESOURCE[0])
        .joinpath(_DIGITS_RESOURCE[1])
    )


def load_digits_dataset() -> Dataset:
    """Load the embedded UCI handwritten digits (1,797 images of 8x8 pixels).

    Pixels (0..16) are divided by 16, then standardised with the global mean
    and standard deviation of the training split. The split is fixed and does
    not depend on any seed: within each class, in file order, every fifth
    sample (the 5th, 10th, ...) goes to the test set, the rest to training
    (1,442 train, 355 test). Both splits keep file order.

    Returns
    -------
    Dataset
        Named ``"digits"``, 64 features, 10 classes, read-only arrays.

    Raises
    ------
    DataError
        If the embedded file is missing or malformed (a broken installation).
    """
    key = ("digits",)
    if key in _cache:
        return dataclasses.replace(_cache[key])

    resource = _digits_resource()
    try:
        text = gzip.decompress(resource.read_bytes())
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(
            f"{resource}: cannot read the embedded digits ({exc}); reinstall trlsim"
        ) from exc
    if table.shape[1] != 65:
        raise DataError(
            f"{resource}: expected 65 columns (64 pixels, then the label), "
            f"found {table.shape[1]}"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
        raise DataError(
            f"{resource}: pixels must lie in 0..16 and labels in 0..9, found "
            f"pixels {pixels.min()}..{pixels.max()}, labels "
            f"{labels.min()}..{labels.max()}"
        )

    # Rank of each sample within its class, in file order.
    rank = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank[members] = np.arange(len(members))
    is_test = rank % _DIGITS_TEST_EVERY == _DIGITS_TEST_EVERY - 1

    x = pixels / 16.0
    mean = x[~is_test].mean()
    std = x[~is_test].std()
    x = ((x - mean) / std).astype(np.float32)
    y = labels.astype(np.int64)
    train_x, train_y = x[~is_test], y[~is_test]
    test_x, test_y = x[is_test], y[is_test]
    _freeze(train_x, train_y, test_x, test_y)

    dataset = Dataset(
        name="digits",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        image_shape=(8, 8),
        n_classes=10,
    )
    _remember(key, dataset)
    return dataclasses.replace(dataset)


def _candidate_dirs(dataset: str, path: str | os.PathLike | None) -> list[Path]:
    if path is not None:
        base = Path(path).expanduser()
        return [base, base / dataset]
    candidates = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        base = Path(env).expanduser()
        candidates += [base / dataset, base]
    candidates += list(SYSTEM_DATA_DIRS.get(dataset, ()))
    return candidates


def _describe_miss(folder: Path) -> str:
    if not folder.exists():
        return f"{folder} (does not exist)"
    if not folder.is_dir():
        return f"{folder} (not a folder)"
    missing = [s for s in IDX_FILES.values() if _find_idx_file(folder, s) is None]
    return f"{folder} (missing {', '.join(missing)}, with or without .gz)"


def resolve_data_path(dataset: str, path: str | os.PathLike | None = None) -> Path:
    """Find the folder that holds a dataset.

    Places are tried in order, and the first folder that holds all four IDX
    files (gzipped or raw) wins:

    1. ``path``, then ``path/<dataset>``, when ``path`` is given (and nothing
       else);
    2. otherwise ``$TRLSIM_DATA/<dataset>``, then ``$TRLSIM_DATA``;
    3. then, for ``fashion-mnist``, ``/usr/share/datasets/fashion-mnist``
       (Debian package ``dataset-fashion-mnist``).

    Parameters
    ----------
    dataset : {"digits", "mnist", "fashion-mnist"}
        Dataset name.
    path : str or path-like, optional
        Folder given by the user, e.g. ``[data] path`` of the configuration.
        Relative paths are taken from the current directory.

    Returns
    -------
    Path
        Absolute path of the folder; for ``"digits"``, which is embedded in
        the package, the embedded file (``path`` is ignored).

    Raises
    ------
    DataError
        If the name is unknown or no place holds the files; the message lists
        every place looked at and how to point trlsim at the data.
    """
    _check_name(dataset)
    if dataset == "digits":
        return Path(str(_digits_resource()))

    candidates = _candidate_dirs(dataset, path)
    for folder in candidates:
        if folder.is_dir() and all(
            _find_idx_file(folder, stem) is not None for stem in IDX_FILES.values()
        ):
            return folder.resolve()

    looked = "".join(f"\n  {_describe_miss(folder)}" for folder in candidates)
    if path is None and not os.environ.get(DATA_ENV_VAR):
        looked += f"\n  ${DATA_ENV_VAR} (not set)"
    raise DataError(
        f"cannot find the {dataset} dataset; looked in:{looked}\n"
        f"A folder must hold {', '.join(IDX_FILES.values())} (each gzipped or "
        f"raw). Set [data] path in the configuration to that folder, or set the "
        f"{DATA_ENV_VAR} environment variable to it or to a folder with a "
        f"{dataset}/ subfolder." + _INSTALL_HINTS.get(dataset, "")
    )


def _check_limit(limit, available: int, split: str, name: str) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
        raise DataError(f"{split}_limit must be a positive integer, got {limit!r}")
    if limit < 1:
        raise DataError(f"{split}_limit must be a positive integer, got {limit}")
    if limit > available:
        raise DataError(
            f"{split}_limit {limit} exceeds the {available} {split} samples of "
            f"{name}; use at most {available}, or no limit"
        )


def load_dataset(
    dataset: str,
    path: str | os.PathLike | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Dataset:
    """Load a dataset by name, finding its files as :func:`resolve_data_path` does.

    Parameters
    ----------
    dataset : {"digits", "mnist", "fashion-mnist"}
        Dataset name.
    path : str or path-like, optional
        Folder of the IDX files; ignored for ``"digits"``.
    train_limit, test_limit : int, optional
        Keep only the first so many samples of each split (file order).

    Returns
    -------
    Dataset
        With read-only arrays.

    Raises
    ------
    DataError
        If the dataset cannot be found or read, or a limit is not a positive
        integer or exceeds the samples available.
    """
    _check_name(dataset)
    if dataset == "digits":
        data = load_digits_dataset()
    else:
        data = load_idx_dataset(resolve_data_path(dataset, path), dataset)

    _check_limit(train_limit, data.n_train, "train", dataset)
    _check_limit(test_limit, data.n_test, "test", dataset)
    if train_limit is not None:
        data.train_x, data.train_y = (
            data.train_x[:train_limit],
            data.train_y[:train_limit],
        )
    if test_limit is not None:
        data.test_x, data.test_y = data.test_x[:test_limit], data.test_y[:test_limit]
    return data
