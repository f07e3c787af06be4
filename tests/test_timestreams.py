import h5py
import numpy as np
import pytest
from conftest import mnist_folder

from trlsim import data, timestreams
from trlsim.streams import Stream
from trlsim.timestreams import (
    ArrayStream,
    RowStream,
    TransformStream,
    affine_warp,
    label_segment_starts,
    warp_matrix,
)

MEAN, STD = 0.1307, 0.3081


def blobs(n=12, shape=(10, 12), seed=0):
    """Smooth uint8 images: one Gaussian blob each, away from the border."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    centre_r = rng.uniform(0.3, 0.6, size=(n, 1, 1)) * shape[0]
    centre_c = rng.uniform(0.3, 0.6, size=(n, 1, 1)) * shape[1]
    width = rng.uniform(1.5, 2.5, size=(n, 1, 1))
    bump = np.exp(-((rows - centre_r) ** 2 + (cols - centre_c) ** 2) / width**2)
    return np.round(255 * bump).astype(np.uint8)


def normalised(images):
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    return ((flat / 255 - MEAN) / STD).astype(np.float32)


def collect(stream, epoch=0, start=0):
    batches = list(stream.epoch(epoch, start=start))
    if not batches:
        return np.empty((0, stream.n_features), np.float32), np.empty(0, np.int64)
    xs, ys = zip(*batches)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    # Small blocks make the few rows of these tests cross block boundaries.
    monkeypatch.setattr(timestreams, "_PARAMETER_BLOCK", 5)
    monkeypatch.setattr(timestreams, "_RENDER_FRAMES", 7)
    monkeypatch.setattr(timestreams, "_READ_BYTES", 40)


# --- warp -----------------------------------------------------------------


def test_identity_warp_returns_the_image():
    image = np.random.default_rng(1).random((2, 5, 7), dtype=np.float32)
    matrices = np.repeat(warp_matrix((5, 7))[None], 2, axis=0)
    np.testing.assert_array_equal(affine_warp(image, matrices), image)


@pytest.mark.parametrize("dx, dy", [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1)])
def test_whole_pixel_shift_is_a_roll_with_zero_fill(dx, dy):
    image = np.random.default_rng(2).random((1, 6, 8), dtype=np.float32)
    expected = np.roll(image, (dy, dx), axis=(1, 2))
    if dy:
        expected[:, 0 if dy > 0 else -1, :] = 0
    if dx:
        expected[:, :, 0 if dx > 0 else -1] = 0
    warped = affine_warp(image, warp_matrix((6, 8), shift=(dx, dy))[None])
    np.testing.assert_array_equal(warped, expected)


def test_quarter_turn_matches_rot90_and_half_pixel_shift_averages():
    image = np.random.default_rng(3).random((1, 6, 6), dtype=np.float32)
    turned = affine_warp(image, warp_matrix((6, 6), angle=90.0)[None])
    np.testing.assert_allclose(turned, np.rot90(image, axes=(1, 2)), atol=1e-5)

    half = affine_warp(image, warp_matrix((6, 6), shift=(0.5, 0))[None])
    np.testing.assert_allclose(
        half[0, :, 1:], (image[0, :, 1:] + image[0, :, :-1]) / 2, atol=1e-6
    )


def test_zoom_about_the_centre_keeps_the_centre():
    image = np.zeros((1, 7, 7), np.float32)
    image[0, 3, 3] = 1.0
    zoomed = affine_warp(image, warp_matrix((7, 7), scale=2.0)[None])
    assert zoomed[0, 3, 3] == 1.0
    # Doubling the size spreads the point over its 8 neighbours: area times 4.
    assert zoomed[0, 3, 4] == zoomed[0, 2, 3] == 0.5 and zoomed[0, 2, 2] == 0.25
    assert zoomed.sum() == 4.0


def test_compiled_warp_matches_numpy_warp():
    images = blobs(4, (9, 11))
    rng = np.random.default_rng(4)
    matrices = warp_matrix(
        (9, 11),
        rng.uniform(-6, 6, (6, 2)),
        rng.uniform(-40, 40, 6),
        0.7 + rng.random(6),
    )
    index = np.array([0, 3, 1, 1, 2, 0])
    out = np.empty((6, 99), np.float32)
    timestreams._render_frames(images, index, matrices, 1 / 255, MEAN, STD, out)
    expected = (affine_warp(images[index] / 255.0, matrices) - MEAN) / STD
    np.testing.assert_allclose(out, expected.reshape(6, -1), atol=1e-5)


# --- TransformStream ------------------------------------------------------


@pytest.mark.parametrize("transform", timestreams.TRANSFORMS)
def test_frame_zero_of_each_segment_is_the_normalised_image(transform):
    images = blobs()
    stream = TransformStream(images, frames=4, transform=transform, seed=5)
    x, y = collect(stream)
    assert x.shape == (12 * 4, 120) and x.dtype == np.float32
    assert y.dtype == np.int64 and np.all(y == -1)
    shown = stream.segment_images(0)
    np.testing.assert_allclose(x[::4], normalised(images[shown]), atol=1e-6)
    assert not np.allclose(x[3::4], x[::4], atol=1e-3)


@pytest.mark.parametrize(
    "options",
    [
        dict(transform="drift", max_shift=0.0),
        dict(transform="rotate", max_angle=0.0),
        dict(transform="scale", scale_range=(1.0, 1.0)),
    ],
)
def test_a_null_transformation_shows_the_image_unchanged(options):
    images = blobs(5)
    stream = TransformStream(images, frames=3, batch_size=2, seed=6, **options)
    x, _ = collect(stream)
    expected = np.repeat(normalised(images[stream.segment_images(0)]), 3, axis=0)
    np.testing.assert_allclose(x, expected[: x.shape[0]], atol=1e-6)


@pytest.mark.parametrize("transform", timestreams.TRANSFORMS)
def test_consecutive_frames_are_closer_than_frames_of_other_segments(transform):
    stream = TransformStream(blobs(), frames=6, transform=transform, seed=7)
    x, _ = collect(stream)
    starts = stream.segment_starts(0)
    step = np.mean((x[1:] - x[:-1]) ** 2, axis=1)
    within, across = step[~starts[1:]], step[starts[1:]]
    assert within.mean() < 0.5 * across.mean()


def test_segment_starts_every_frames_rows():
    stream = TransformStream(blobs(7), frames=3, batch_size=4, seed=0)
    assert stream.n_batches == 7 * 3 // 4 == len(stream)
    starts = stream.segment_starts(2)
    assert starts.shape == (20,) and starts.dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(starts), np.arange(0, 20, 3))


def test_labels_follow_the_image_and_each_epoch_permutes_the_images():
    images, labels = blobs(), np.arange(12) * 10 + 3
    stream = TransformStream(images, labels, frames=2, segments=30, seed=8)
    x, y = collect(stream)
    shown = stream.segment_images(0)
    np.testing.assert_array_equal(y, np.repeat(labels[shown], 2))
    np.testing.assert_array_equal(np.sort(shown[:12]), np.arange(12))
    np.testing.assert_array_equal(np.sort(shown[12:24]), np.arange(12))
    assert not np.array_equal(stream.segment_images(1), shown)


def test_reproducible_from_the_seed_and_new_each_epoch():
    def frames(seed, epoch):
        stream = TransformStream(blobs(), frames=3, transform="mixed", seed=seed)
        return collect(stream, epoch)[0]

    np.testing.assert_array_equal(frames(9, 0), frames(9, 0))
    np.testing.assert_array_equal(frames(9, 1), frames(9, 1))
    assert not np.array_equal(frames(9, 0), frames(9, 1))
    assert not np.array_equal(frames(9, 0), frames(10, 0))
    seq = np.random.SeedSequence(9)
    stream = TransformStream(blobs(), frames=3, transform="mixed", seed=seq)
    np.testing.assert_array_equal(collect(stream)[0], frames(9, 0))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_transform_start_equals_skipping(batch_size):
    stream = TransformStream(
        blobs(5), np.arange(5), frames=4, segments=13, batch_size=batch_size, seed=11
    )
    x, y = collect(stream, 2)
    for start in (1, stream.n_batches // 2, stream.n_batches - 1, stream.n_batches):
        xs, ys = collect(stream, 2, start=start)
        np.testing.assert_array_equal(xs, x[start * batch_size :])
        np.testing.assert_array_equal(ys, y[start * batch_size :])


def test_float_images_in_unit_range_match_raw_pixels():
    images = blobs(4)
    raw = collect(TransformStream(images, frames=3, transform="mixed", seed=1))[0]
    scaled = TransformStream(images / 255.0, frames=3, transform="mixed", seed=1)
    np.testing.assert_allclose(collect(scaled)[0], raw, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(images=blobs(3).astype(float)), r"scaled to \[0, 1\]"),
        (dict(images=blobs(3)[0]), "3-D"),
        (dict(transform="shear"), "unknown transform"),
        (dict(scale_range=(1.1, 1.3)), "scale_range"),
        (dict(frames=0), "frames"),
        (dict(labels=np.arange(2)), "labels has 2 entries"),
        (dict(segments=1, frames=2, batch_size=3), "fewer than one batch"),
    ],
)
def test_transform_stream_rejects_bad_arguments(options, message):
    options = {"images": blobs(3), **options}
    with pytest.raises(ValueError, match=message):
        TransformStream(**options)


def test_transform_epoch_rejects_bad_start():
    stream = TransformStream(blobs(3), frames=2)
    with pytest.raises(ValueError, match="start"):
        stream.epoch(0, start=7)
    with pytest.raises(ValueError, match="epoch"):
        stream.segment_starts(-1)


# --- RowStream ------------------------------------------------------------


def test_rows_in_natural_order():
    images, labels = blobs(5, (4, 6)), np.arange(5) + 1
    stream = RowStream(images, labels, batch_size=3)
    assert (stream.n_features, stream.n_batches, len(stream)) == (6, 6, 6)
    x, y = collect(stream)
    rows = normalised(images.reshape(-1, 1, 6)).reshape(-1, 6)
    np.testing.assert_allclose(x, rows[:18], atol=1e-6)
    np.testing.assert_array_equal(y, np.repeat(labels, 4)[:18])
    np.testing.assert_array_equal(
        np.flatnonzero(stream.segment_starts(0)), [0, 4, 8, 12, 16]
    )
    assert np.all(collect(RowStream(images, batch_size=4))[1] == -1)


def test_shuffled_rows_keep_each_image_whole_and_change_per_epoch():
    images = blobs(6, (4, 6))
    stream = RowStream(images, np.arange(6), batch_size=4, order="shuffled", seed=2)
    x, y = collect(stream, 1)
    order = stream.indices(1)
    np.testing.assert_array_equal(y, np.repeat(order, 4))
    np.testing.assert_allclose(x, normalised(images[order]).reshape(-1, 6), atol=1e-6)
    assert not np.array_equal(stream.indices(0), order)
    again = RowStream(images, np.arange(6), batch_size=4, order="shuffled", seed=2)
    np.testing.assert_array_equal(collect(again, 1)[0], x)
    for start in (1, 3, 6):
        np.testing.assert_array_equal(
            collect(stream, 1, start=start)[0], x[4 * start :]
        )


def test_row_stream_rejects_bad_order():
    with pytest.raises(ValueError, match="unknown order"):
        RowStream(blobs(2), order="chunked")


# --- ArrayStream ----------------------------------------------------------


def test_array_stream_in_order_partial_batch_dropped():
    x = np.arange(7 * 3, dtype=np.float64).reshape(7, 3)
    stream = ArrayStream(x, labels=np.arange(7), batch_size=2)
    assert (stream.n_batches, stream.n_features, len(stream)) == (3, 3, 3)
    batches = list(stream.epoch(4))
    assert all(xb.dtype == np.float32 and xb.shape == (2, 3) for xb, _ in batches)
    np.testing.assert_array_equal(collect(stream)[0], x[:6])
    np.testing.assert_array_equal(collect(stream)[1], np.arange(6))
    np.testing.assert_array_equal(collect(stream, start=2)[0], x[4:6])
    starts = stream.segment_starts(0)
    np.testing.assert_array_equal(starts, [True] + [False] * 5)


def test_array_stream_starts_as_mask_or_indices_and_images_flattened():
    x = np.random.default_rng(0).random((6, 2, 3))
    mask = np.array([False, False, True, False, True, False])
    by_mask = ArrayStream(x, starts=mask, batch_size=3)
    by_index = ArrayStream(x, starts=[4, 2], batch_size=3)
    expected = [True, False, True, False, True, False]
    np.testing.assert_array_equal(by_mask.segment_starts(0), expected)
    np.testing.assert_array_equal(by_index.segment_starts(0), expected)
    np.testing.assert_allclose(collect(by_mask)[0], x.reshape(6, 6), rtol=1e-6)


@pytest.mark.parametrize(
    "x, options, message",
    [
        (np.zeros(5), {}, "2-D .* or 3-D"),
        (np.zeros((2, 2, 2, 2)), {}, "2-D .* or 3-D"),
        (np.array([[0.0, np.nan], [1, 2]]), {}, "row 0 contains NaN"),
        (np.zeros((4, 2)), dict(labels=np.arange(3)), "labels has 3 entries"),
        (np.zeros((4, 2)), dict(starts=np.ones(3, bool)), "mask of 3 entries"),
        (np.zeros((4, 2)), dict(starts=[0, 4]), "outside 0..3"),
        (np.zeros((4, 2)), dict(starts=[0.5]), "bool mask"),
        (np.zeros((4, 2)), dict(batch_size=5), "fewer than one batch"),
        (np.array([["a", "b"]]), {}, "real numbers"),
    ],
)
def test_array_stream_rejects_bad_arrays(x, options, message):
    with pytest.raises(ValueError, match=message):
        ArrayStream(x, **options)


def test_from_npy_is_memory_mapped_and_reads_in_blocks(tmp_path):
    x = np.random.default_rng(1).random((11, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    stream = ArrayStream.from_file(tmp_path / "x.npy")
    assert (stream.n_batches, stream.n_features) == (11, 3)
    np.testing.assert_array_equal(collect(stream)[0], x)
    np.testing.assert_array_equal(collect(stream, start=4)[0], x[4:])
    pairs = ArrayStream.from_file(tmp_path / "x.npy", batch_size=2)
    np.testing.assert_array_equal(collect(pairs, start=1)[0], x[2:10])
    with pytest.raises(ValueError, match="holds one array, so labels_key"):
        ArrayStream.from_file(tmp_path / "x.npy", labels_key="y")


def test_from_npz_picks_keys(tmp_path):
    x = np.random.default_rng(2).random((6, 2, 2))
    path = tmp_path / "d.npz"
    np.savez(path, frames=x, y=np.arange(6), cuts=np.array([3]))
    stream = ArrayStream.from_file(path, labels_key="y", starts_key="cuts")
    np.testing.assert_allclose(collect(stream)[0], x.reshape(6, 4), rtol=1e-6)
    np.testing.assert_array_equal(collect(stream)[1], np.arange(6))
    np.testing.assert_array_equal(np.flatnonzero(stream.segment_starts(0)), [0, 3])

    np.savez(tmp_path / "one.npz", only=x)
    assert ArrayStream.from_file(tmp_path / "one.npz").n_features == 4
    with pytest.raises(ValueError, match="holds 3 arrays .*'frames'.*key="):
        ArrayStream.from_file(path)
    with pytest.raises(ValueError, match="no array 'x'; arrays available: 'frames'"):
        ArrayStream.from_file(path, key="x")
    with pytest.raises(ValueError, match="d.npz .*labels='cuts'.*labels has 1"):
        ArrayStream.from_file(path, key="frames", labels_key="cuts")


def test_from_hdf5_reads_lazily(tmp_path):
    x = np.random.default_rng(3).random((9, 4))
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as file:
        file["session/x"] = x
        file["session/y"] = np.arange(9) % 2
        file["session/starts"] = np.arange(9) % 3 == 0
        file["bad"] = np.where(np.arange(8)[:, None] == 5, np.nan, 1.0) * np.ones(2)
    stream = ArrayStream.from_file(
        path, "/session/x", "session/y", "session/starts", batch_size=2
    )
    assert (stream.n_batches, stream.n_features) == (4, 4)
    np.testing.assert_allclose(collect(stream)[0], x[:8], rtol=1e-6)
    np.testing.assert_array_equal(collect(stream)[1], np.arange(8) % 2)
    np.testing.assert_allclose(collect(stream, start=3)[0], x[6:8], rtol=1e-6)
    np.testing.assert_array_equal(np.flatnonzero(stream.segment_starts(0)), [0, 3, 6])

    bad = ArrayStream.from_file(path, "bad", batch_size=2)
    assert next(iter(bad.epoch(0)))[0].shape == (2, 2)
    with pytest.raises(ValueError, match=r"d.h5 \(x='bad'\): row 5 contains NaN"):
        collect(bad)
    with pytest.raises(ValueError, match="datasets available: 'bad', 'session/starts'"):
        ArrayStream.from_file(path, key="session")
    with pytest.raises(ValueError, match="holds 4 datasets"):
        ArrayStream.from_file(path)


def test_from_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5 does not exist"):
        ArrayStream.from_file(tmp_path / "missing.h5")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unknown format '.csv'"):
        ArrayStream.from_file(tmp_path / "x.csv")
    np.save(tmp_path / "flat.npy", np.zeros(4))
    with pytest.raises(ValueError, match="flat.npy: x must be 2-D"):
        ArrayStream.from_file(tmp_path / "flat.npy")


# --- label-chunked Stream -------------------------------------------------


def test_label_segment_starts_marks_label_changes():
    labels = np.repeat(np.arange(4), 8)
    stream = Stream(np.zeros((32, 2)), labels, batch_size=5, chunk_size=4, seed=3)
    starts = label_segment_starts(stream, 1)
    assert starts.shape == (30,) and starts[0]
    seen = labels[stream.indices(1)][:30]
    np.testing.assert_array_equal(starts[1:], seen[1:] != seen[:-1])
    if hasattr(stream, "segment_starts"):
        np.testing.assert_array_equal(stream.segment_starts(1), starts)


# --- real MNIST -----------------------------------------------------------


def test_streams_on_the_first_real_mnist_images():
    folder = mnist_folder()
    if folder is None:
        pytest.skip(
            "MNIST not found: set TRLSIM_DATA to a folder holding mnist/ with "
            "train-images-idx3-ubyte.gz"
        )
    images = data.read_idx(folder / "train-images-idx3-ubyte.gz")[:50]
    labels = data.read_idx(folder / "train-labels-idx1-ubyte.gz")[:50]

    stream = TransformStream(images, labels, frames=5, transform="mixed", seed=42)
    assert stream.n_features == 784 and stream.n_batches == 250
    x, y = collect(stream)
    shown = stream.segment_images(0)
    np.testing.assert_allclose(x[::5], normalised(images[shown]), atol=1e-6)
    np.testing.assert_array_equal(y, np.repeat(labels[shown], 5))
    step = np.mean((x[1:] - x[:-1]) ** 2, axis=1)
    starts = stream.segment_starts(0)[1:]
    assert step[~starts].mean() < 0.5 * step[starts].mean()

    rows = RowStream(images, labels)
    assert (rows.n_features, rows.n_batches) == (28, 50)
    xb, yb = next(iter(rows.epoch(0, start=7)))
    np.testing.assert_allclose(xb, normalised(images[7:8]).reshape(28, 28), atol=1e-6)
    assert np.all(yb == labels[7])
