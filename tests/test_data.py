import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trlsim import data
from trlsim.data import DataError
from conftest import mnist_folder

FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


MNIST_DIR = mnist_folder()
needs_mnist = pytest.mark.skipif(
    MNIST_DIR is None,
    reason="MNIST not found: set TRLSIM_DATA to a folder holding mnist/ with the "
    "four gzipped IDX files",
)


def write_idx(path, array, magic=None, compress=False, extra=b"", cut=0):
    """Write ``array`` as an IDX file, optionally damaged."""
    array = np.asarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 + array.ndim
    header = magic.to_bytes(4, "big") + b"".join(
        n.to_bytes(4, "big") for n in array.shape
    )
    raw = header + array.tobytes() + extra
    if cut:
        raw = raw[:-cut]
    if compress:
        raw = gzip.compress(raw)
    Path(path).write_bytes(raw)
    return Path(path)


def write_idx_folder(folder, n_train=6, n_test=4, shape=(3, 2), compress=True):
    """A small, valid IDX dataset folder; returns its images and labels."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(
            folder / f"{split}-images-idx3-ubyte{suffix}", images, compress=compress
        )
        write_idx(
            folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress=compress
        )
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch):
    # Searches must not find data through the caller's environment or system
    # folders unless a test asks for it.
    monkeypatch.delenv(data.DATA_ENV_VAR, raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {"mnist": (), "fashion-mnist": ()})


# Real MNIST


@needs_mnist
def test_read_idx_real_mnist():
    images = data.read_idx(MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = data.read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz")
    test_labels = data.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert labels.shape == (60000,)
    assert labels[:10].tolist() == FIRST_TRAIN_LABELS
    assert test_labels[:10].tolist() == FIRST_TEST_LABELS
    assert images.flags.writeable


@needs_mnist
def test_load_real_mnist():
    mnist = data.load_dataset("mnist", MNIST_DIR)
    assert mnist.name == "mnist"
    assert mnist.train_x.shape == (60000, 784) and mnist.test_x.shape == (10000, 784)
    assert mnist.train_x.dtype == np.float32 and mnist.train_y.dtype == np.int64
    assert mnist.n_features == 784 and mnist.n_classes == 10
    assert mnist.image_shape == (28, 28)
    assert mnist.train_y[:10].tolist() == FIRST_TRAIN_LABELS
    assert mnist.test_y[:10].tolist() == FIRST_TEST_LABELS
    assert abs(float(mnist.train_x.mean())) < 1e-3
    assert abs(float(mnist.train_x.std()) - 1.0) < 1e-3
    background = (0.0 - 0.1307) / 0.3081
    assert np.isclose(mnist.train_x.min(), background, atol=1e-6)
    assert np.bincount(mnist.train_y).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]


@needs_mnist
def test_mnist_from_environment_variable(monkeypatch):
    monkeypatch.setenv(data.DATA_ENV_VAR, str(MNIST_DIR.parent))
    assert data.resolve_data_path("mnist") == MNIST_DIR.resolve()
    monkeypatch.setenv(data.DATA_ENV_VAR, str(MNIST_DIR))
    assert data.resolve_data_path("mnist") == MNIST_DIR.resolve()
    assert data.load_dataset("mnist").train_x.shape == (60000, 784)


@needs_mnist
def test_explicit_path_may_hold_a_dataset_subfolder():
    assert data.resolve_data_path("mnist", MNIST_DIR.parent) == MNIST_DIR.resolve()


@needs_mnist
def test_raw_copies_read_the_same(tmp_path):
    for gz in MNIST_DIR.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(tmp_path / gz.stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    raw_labels = data.read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    gz_labels = data.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(raw_labels, gz_labels)

    from_raw = data.load_idx_dataset(tmp_path, "mnist")
    from_gz = data.load_idx_dataset(MNIST_DIR, "mnist")
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(from_raw, field), getattr(from_gz, field))


@needs_mnist
def test_mnist_limits():
    mnist = data.load_dataset("mnist", MNIST_DIR, train_limit=1000, test_limit=200)
    assert mnist.train_x.shape == (1000, 784) and mnist.test_y.shape == (200,)
    assert mnist.train_y[:10].tolist() == FIRST_TRAIN_LABELS
    with pytest.raises(DataError, match="60000"):
        data.load_dataset("mnist", MNIST_DIR, train_limit=60001)


@needs_mnist
def test_cache_returns_read_only_shared_arrays():
    first = data.load_dataset("mnist", MNIST_DIR)
    second = data.load_dataset("mnist", MNIST_DIR)
    assert np.shares_memory(first.train_x, second.train_x)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert not getattr(first, field).flags.writeable
    with pytest.raises(ValueError):
        first.train_x[0, 0] = 1.0
    first.train_x = None
    assert data.load_dataset("mnist", MNIST_DIR).train_x is not None


# Malformed files


def test_synthetic_folder_loads_and_normalises(tmp_path):
    arrays = write_idx_folder(tmp_path)
    dataset = data.load_idx_dataset(tmp_path, "mnist")
    images, labels = arrays["train"]
    assert dataset.image_shape == (3, 2) and dataset.n_features == 6
    expected = (images.reshape(6, -1) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(dataset.train_x, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(dataset.train_y, labels)

    fashion = data.load_idx_dataset(tmp_path, "fashion-mnist")
    expected = (images.reshape(6, -1) / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(fashion.train_x, expected, rtol=1e-5, atol=1e-6)


def test_raw_and_gzipped_synthetic_files_agree(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = data.read_idx(write_idx(tmp_path / "images.gz", array))
    packed = data.read_idx(write_idx(tmp_path / "images.raw", array, compress=True))
    np.testing.assert_array_equal(raw, array)
    np.testing.assert_array_equal(packed, array)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file(tmp_path, compress):
    path = write_idx(tmp_path / "images", np.ones((5, 4, 4)), cut=7, compress=compress)
    with pytest.raises(DataError, match="truncated") as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert "80 bytes" in message and "73" in message


def test_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    with pytest.raises(DataError, match="16-byte header") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)

    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("magic", [0x12340803, 0x00000703, 0x00000800])
def test_wrong_magic(tmp_path, magic):
    path = write_idx(tmp_path / "labels", np.ones(4), magic=magic)
    with pytest.raises(DataError, match="not an IDX file") as info:
        data.read_idx(path)
    message = str(info.value)
    assert str(path) in message and f"0x{magic:08X}" in message
    assert "2051" in message and "2049" in message


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(b"\x1f\x8b" + b"not really gzip data" * 5)
    with pytest.raises(DataError, match="corrupt gzip") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "images.gz", np.ones((50, 8, 8)), compress=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="corrupt gzip") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_bytes(tmp_path, compress):
    path = write_idx(tmp_path / "labels", np.ones(4), extra=b"xyz", compress=compress)
    with pytest.raises(DataError, match="3 unexpected trailing bytes") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        data.read_idx(tmp_path / "nothing.gz")
    assert str(tmp_path / "nothing.gz") in str(info.value)

    write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        data.load_idx_dataset(tmp_path, "mnist")
    message = str(info.value)
    assert str(tmp_path) in message
    assert "tried t10k-labels-idx1-ubyte.gz and t10k-labels-idx1-ubyte" in message


def test_image_label_count_mismatch(tmp_path):
    write_idx_folder(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(5), compress=True)
    with pytest.raises(DataError, match="counts differ") as info:
        data.load_idx_dataset(tmp_path, "mnist")
    message = str(info.value)
    assert str(labels) in message
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert "6 images" in message and "5 labels" in message


def test_label_out_of_range(tmp_path):
    write_idx_folder(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(labels, [1, 2, 10, 3], compress=True)
    with pytest.raises(DataError, match="out of range") as info:
        data.load_idx_dataset(tmp_path, "mnist")
    assert str(labels) in str(info.value)


def test_labels_file_in_place_of_images(tmp_path):
    write_idx_folder(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(images, np.zeros(6), compress=True)
    with pytest.raises(DataError, match="3-D uint8 images") as info:
        data.load_idx_dataset(tmp_path, "mnist")
    assert str(images) in str(info.value)


def test_rewritten_file_is_read_again(tmp_path):
    write_idx_folder(tmp_path)
    before = data.load_idx_dataset(tmp_path, "mnist")
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, [9, 9, 9, 9, 9, 9], compress=True)
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = data.load_idx_dataset(tmp_path, "mnist")
    assert after.train_y.tolist() == [9] * 6
    assert before.train_y.tolist() != [9] * 6


# Finding datasets


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'") as info:
        data.load_dataset("cifar")
    for name in data.DATASETS:
        assert name in str(info.value)
    with pytest.raises(DataError, match="mnist"):
        data.load_idx_dataset(".", "digits")


def test_no_path_found(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="cannot find the mnist dataset") as info:
        data.load_dataset("mnist")
    message = str(info.value)
    assert "TRLSIM_DATA (not set)" in message
    assert "[data] path" in message

    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path))
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError) as info:
        data.resolve_data_path("mnist")
    message = str(info.value)
    assert f"{tmp_path / 'mnist'} (missing train-images-idx3-ubyte" in message
    assert f"{tmp_path} (missing" in message

    fashion_default = tmp_path / "usr-share-fashion"
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", (fashion_default,))
    with pytest.raises(DataError) as info:
        data.resolve_data_path("fashion-mnist")
    message = str(info.value)
    assert f"{tmp_path / 'fashion-mnist'} (does not exist)" in message
    assert f"{fashion_default} (does not exist)" in message

    explicit = tmp_path / "elsewhere"
    with pytest.raises(DataError) as info:
        data.load_dataset("mnist", explicit)
    message = str(info.value)
    assert f"{explicit} (does not exist)" in message
    assert str(tmp_path / "mnist") not in message.replace(str(explicit), "")


def test_search_order(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "root")
    write_idx_folder(tmp_path / "root" / "fashion-mnist")
    monkeypatch.setenv(data.DATA_ENV_VAR, str(tmp_path / "root"))
    assert (
        data.resolve_data_path("fashion-mnist") == tmp_path / "root" / "fashion-mnist"
    )
    assert data.resolve_data_path("mnist") == tmp_path / "root"

    system = tmp_path / "system"
    write_idx_folder(system)
    monkeypatch.delenv(data.DATA_ENV_VAR)
    monkeypatch.setitem(data.SYSTEM_DATA_DIRS, "fashion-mnist", (system,))
    assert data.resolve_data_path("fashion-mnist") == system
    dataset = data.load_dataset("fashion-mnist")
    assert dataset.name == "fashion-mnist" and dataset.n_train == 6


def test_raw_folder_found(tmp_path):
    write_idx_folder(tmp_path, compress=False)
    assert data.resolve_data_path("mnist", tmp_path) == tmp_path
    assert data.load_dataset("mnist", str(tmp_path)).n_test == 4


# Embedded digits


def test_digits():
    digits = data.load_dataset("digits")
    assert digits.name == "digits"
    assert digits.n_train + digits.n_test == 1797
    assert (digits.n_train, digits.n_test) == (1442, 355)
    assert digits.n_features == 64 and digits.image_shape == (8, 8)
    assert digits.n_classes == 10
    assert digits.train_x.dtype == np.float32 and digits.test_y.dtype == np.int64
    assert abs(float(digits.train_x.mean())) < 1e-5
    assert abs(float(digits.train_x.std()) - 1.0) < 1e-5
    assert not digits.train_x.flags.writeable

    # Stratified: every fifth sample of each class is a test sample.
    train_counts = np.bincount(digits.train_y, minlength=10)
    test_counts = np.bincount(digits.test_y, minlength=10)
    totals = train_counts + test_counts
    np.testing.assert_array_equal(test_counts, totals // 5)
    assert totals.tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_is_deterministic():
    first = data.load_digits_dataset()
    data.clear_cache()
    second = data.load_digits_dataset()
    assert not np.shares_memory(first.train_x, second.train_x)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))


def test_digits_match_the_embedded_file():
    table = np.loadtxt(
        gzip.open(data.resolve_data_path("digits")), delimiter=",", dtype=np.int64
    )
    pixels, labels = table[:, :64] / 16.0, table[:, 64]
    is_test = np.zeros(len(labels), dtype=bool)
    for label in range(10):
        is_test[np.flatnonzero(labels == label)[4::5]] = True
    mean, std = pixels[~is_test].mean(), pixels[~is_test].std()

    digits = data.load_digits_dataset()
    np.testing.assert_allclose(
        digits.train_x, (pixels[~is_test] - mean) / std, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        digits.test_x, (pixels[is_test] - mean) / std, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(digits.test_y, labels[is_test])


def test_digits_ignores_path_and_limits():
    digits = data.load_dataset("digits", "/nowhere", train_limit=100, test_limit=50)
    full = data.load_dataset("digits")
    assert digits.train_x.shape == (100, 64) and digits.test_y.shape == (50,)
    np.testing.assert_array_equal(digits.train_x, full.train_x[:100])
    assert full.n_train == 1442


@pytest.mark.parametrize(
    "limits, match",
    [
        ({"train_limit": 1443}, "train_limit 1443 exceeds the 1442 train samples"),
        ({"test_limit": 356}, "test_limit 356 exceeds the 355 test samples"),
        ({"train_limit": 0}, "positive integer"),
        ({"test_limit": 2.5}, "positive integer"),
    ],
)
def test_bad_limits(limits, match):
    with pytest.raises(DataError, match=match):
        data.load_dataset("digits", **limits)
