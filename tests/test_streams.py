import numpy as np
import pytest

from trlsim import data, streams
from trlsim.streams import Stream, apply_coherence, chunked_order, epoch_order
from conftest import mnist_folder


MNIST_DIR = mnist_folder()


@pytest.fixture(scope="module")
def mnist_labels():
    if MNIST_DIR is None:
        pytest.skip(
            "MNIST not found: set TRLSIM_DATA to a folder holding mnist/ with the "
            "four gzipped IDX files"
        )
    return data.read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz").astype(np.int64)


@pytest.fixture(scope="module")
def digits():
    return data.load_digits_dataset()


SYNTHETIC_LABELS = {
    "balanced": np.repeat(np.arange(4), 64),
    "ragged": np.repeat([7, -3, 42, 0, 5, 1], [5, 16, 17, 40, 100, 1]),
    "one class": np.zeros(37, dtype=np.int64),
    "interleaved": np.arange(300) % 7,
}


def adjacent_purity(labels, order):
    """Fraction of neighbouring positions that hold the same class."""
    stream = labels[order]
    return float(np.mean(stream[1:] == stream[:-1]))


def assert_permutation(order, n):
    assert order.dtype == np.int64 and order.shape == (n,)
    np.testing.assert_array_equal(np.sort(order), np.arange(n))


def assert_pure_chunks(labels, order, chunk_size):
    """Aligned pure chunks, then a tail of one run per class left over."""
    classes, counts = np.unique(labels, return_counts=True)
    full_chunks = -(-counts // chunk_size) - 1
    head = int(np.sum(full_chunks)) * chunk_size
    stream = labels[order]

    chunks = stream[:head].reshape(-1, chunk_size)
    assert np.all(chunks == chunks[:, :1])
    np.testing.assert_array_equal(
        [np.sum(chunks[:, 0] == c) for c in classes], full_chunks
    )

    tail = stream[head:]
    starts = np.flatnonzero(np.r_[True, tail[1:] != tail[:-1]])
    run_classes = tail[starts]
    run_lengths = np.diff(np.r_[starts, len(tail)])
    assert sorted(run_classes.tolist()) == sorted(classes.tolist())
    for c, length in zip(run_classes, run_lengths):
        left = counts[classes == c][0] - full_chunks[classes == c][0] * chunk_size
        assert 1 <= length == left <= chunk_size


def reference_chunked_order(labels, chunk_size, rng):
    """Plain-Python chunked order drawing the same random numbers."""
    classes, class_of = np.unique(labels, return_inverse=True)
    grouped = np.lexsort((rng.random(len(labels)), class_of))
    queues = [list(grouped[class_of[grouped] == c]) for c in range(len(classes))]
    n_chunks = sum(-(-len(q) // chunk_size) for q in queues)
    order = []
    for u in rng.random(n_chunks):
        eligible = [c for c, q in enumerate(queues) if len(q) > chunk_size]
        if not eligible:
            eligible = [c for c, q in enumerate(queues) if q]
        weights = np.array([len(queues[c]) for c in eligible])
        pick = eligible[
            int(np.searchsorted(np.cumsum(weights), u * weights.sum(), "right"))
        ]
        order += queues[pick][:chunk_size]
        del queues[pick][:chunk_size]
    return np.array(order, dtype=np.int64)


# chunked_order


@pytest.mark.parametrize("name", sorted(SYNTHETIC_LABELS))
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 1000])
def test_chunked_order_synthetic(name, chunk_size):
    labels = SYNTHETIC_LABELS[name]
    for seed in range(5):
        order = chunked_order(labels, chunk_size, np.random.default_rng(seed))
        assert_permutation(order, len(labels))
        assert_pure_chunks(labels, order, chunk_size)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_LABELS))
@pytest.mark.parametrize("chunk_size", [3, 16])
def test_chunked_order_matches_reference(name, chunk_size):
    labels = SYNTHETIC_LABELS[name]
    for seed in range(5):
        fast = chunked_order(labels, chunk_size, np.random.default_rng(seed))
        slow = reference_chunked_order(labels, chunk_size, np.random.default_rng(seed))
        np.testing.assert_array_equal(fast, slow)


def test_chunked_order_real_mnist(mnist_labels):
    order = chunked_order(mnist_labels, 16, np.random.default_rng(42))
    assert_permutation(order, 60000)
    assert_pure_chunks(mnist_labels, order, 16)
    assert adjacent_purity(mnist_labels, order) > 0.93


def test_chunked_order_matches_reference_on_mnist(mnist_labels):
    fast = chunked_order(mnist_labels, 16, np.random.default_rng(3))
    slow = reference_chunked_order(mnist_labels, 16, np.random.default_rng(3))
    np.testing.assert_array_equal(fast, slow)


def test_classes_are_interleaved(mnist_labels):
    share = np.bincount(mnist_labels) / len(mnist_labels)
    n_head = len(mnist_labels) // 10
    head_shares = []
    for epoch in range(10):
        order = chunked_order(mnist_labels, 16, np.random.default_rng(epoch))
        head = np.bincount(mnist_labels[order[:n_head]], minlength=10) / n_head
        # Every class shows up early, roughly in proportion to its size.
        assert np.all(np.abs(head - share) < 0.06)
        head_shares.append(head)
    assert np.all(np.abs(np.mean(head_shares, axis=0) - share) < 0.02)

    # Within each tenth of an epoch, too.
    tenths = mnist_labels[order].reshape(10, -1)
    for part in tenths:
        assert np.all(
            np.abs(np.bincount(part, minlength=10) / len(part) - share) < 0.06
        )


def test_chunked_order_first_pick_follows_class_sizes():
    labels = np.repeat([0, 1], [900, 100])
    firsts = [
        labels[chunked_order(labels, 10, np.random.default_rng(s))[0]]
        for s in range(2000)
    ]
    assert abs(np.mean(firsts) - 0.1) < 0.025


def test_chunked_order_edge_cases():
    rng = np.random.default_rng(0)
    assert chunked_order(np.array([], dtype=np.int64), 16, rng).shape == (0,)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_order([0, 1], 0, rng)
    with pytest.raises(ValueError, match="integers"):
        chunked_order([0.5, 1.0], 4, rng)
    with pytest.raises(ValueError, match="1-D"):
        chunked_order(np.zeros((2, 2), dtype=int), 4, rng)


# Coherence


def test_coherence_one_is_identity():
    order = np.random.default_rng(0).permutation(100)
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    result = apply_coherence(order, 1.0, rng)
    np.testing.assert_array_equal(result, order)
    assert result is not order
    assert rng.bit_generator.state == state


def test_coherence_swap_count_small():
    order = np.arange(10000)
    for seed in range(20):
        # round(0.001 * 10000) = 10 swaps of distinct positions.
        result = apply_coherence(order, 0.999, np.random.default_rng(seed))
        assert_permutation(result, 10000)
        changed = int(np.sum(result != order))
        assert 2 <= changed <= 20
    np.testing.assert_array_equal(order, np.arange(10000))


@pytest.mark.parametrize("coherence", [0.9, 0.5, 0.0])
def test_coherence_moves_the_expected_fraction(coherence):
    # Each swap touches two positions, so a position survives round(1 - c) * N
    # swaps with probability about exp(-2 (1 - c)).
    n = 100000
    result = apply_coherence(np.arange(n), coherence, np.random.default_rng(7))
    assert_permutation(result, n)
    moved = np.mean(result != np.arange(n))
    assert abs(moved - (1 - np.exp(-2 * (1 - coherence)))) < 0.01


def test_coherence_lowers_purity(mnist_labels):
    rng = np.random.default_rng(5)
    order = chunked_order(mnist_labels, 16, rng)
    pure = adjacent_purity(mnist_labels, order)
    half = adjacent_purity(mnist_labels, apply_coherence(order, 0.5, rng))
    none = adjacent_purity(mnist_labels, apply_coherence(order, 0.0, rng))
    shuffled = adjacent_purity(mnist_labels, rng.permutation(len(mnist_labels)))
    assert pure > 0.93
    assert 0.15 < half < 0.25
    # Coherence 0 is close to, not exactly, a random order.
    assert abs(none - shuffled) < 0.03
    assert none < half < pure


def test_coherence_validation():
    rng = np.random.default_rng(0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="coherence"):
            apply_coherence(np.arange(4), bad, rng)
    np.testing.assert_array_equal(apply_coherence([3], 0.0, rng), [3])


# epoch_order


def test_epoch_orders(digits):
    labels = digits.train_y
    n = len(labels)
    natural = epoch_order(labels, "natural", 16, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(natural, np.arange(n))

    shuffled = epoch_order(labels, "shuffled", 16, 1.0, np.random.default_rng(0))
    assert_permutation(shuffled, n)
    assert adjacent_purity(labels, shuffled) < 0.2
    other = epoch_order(labels, "shuffled", 16, 1.0, np.random.default_rng(1))
    assert not np.array_equal(shuffled, other)

    chunked = epoch_order(labels, "chunked", 16, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(
        chunked, chunked_order(labels, 16, np.random.default_rng(0))
    )
    degraded = epoch_order(labels, "chunked", 16, 0.5, np.random.default_rng(0))
    assert_permutation(degraded, n)
    assert adjacent_purity(labels, degraded) < adjacent_purity(labels, chunked)

    with pytest.raises(ValueError, match="valid orders"):
        epoch_order(labels, "random", 16, 1.0, np.random.default_rng(0))


# Stream


def test_stream_batches(digits):
    stream = Stream(digits.train_x, digits.train_y, batch_size=64, seed=3)
    assert stream.n_batches == len(stream) == 1442 // 64 == 22
    assert stream.n_features == 64

    order = stream.indices(0)
    assert_permutation(order, 1442)
    batches = list(stream.epoch(0))
    assert len(batches) == 22
    for xb, yb in batches:
        assert xb.shape == (64, 64) and xb.dtype == np.float32
        assert xb.flags.c_contiguous and xb.flags.writeable
        assert yb.shape == (64,) and yb.dtype == np.int64
        assert not np.shares_memory(xb, digits.train_x)

    # Batches follow the epoch's order; the last partial batch is dropped.
    np.testing.assert_array_equal(
        np.concatenate([xb for xb, _ in batches]), digits.train_x[order[: 22 * 64]]
    )
    np.testing.assert_array_equal(
        np.concatenate([yb for _, yb in batches]), digits.train_y[order[: 22 * 64]]
    )

    # Four pure chunks of 16 per batch while the order is still chunked.
    for _, yb in batches[:10]:
        chunks = yb.reshape(4, 16)
        assert np.all(chunks == chunks[:, :1])


def test_stream_batches_are_independent(digits):
    stream = Stream(digits.train_x, digits.train_y, batch_size=32, order="natural")
    batches = stream.epoch(0)
    (first, _), (second, _) = next(batches), next(batches)
    first[:] = 123.0
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(second, digits.train_x[32:64])
    assert not np.any(digits.train_x == 123.0)


def test_stream_natural_and_shuffled(digits):
    natural = Stream(digits.train_x, digits.train_y, 100, order="natural")
    np.testing.assert_array_equal(natural.indices(5), np.arange(1442))
    xb, yb = next(natural.epoch(0))
    np.testing.assert_array_equal(xb, digits.train_x[:100])

    shuffled = Stream(digits.train_x, digits.train_y, 100, order="shuffled", seed=1)
    assert_permutation(shuffled.indices(0), 1442)
    assert not np.array_equal(shuffled.indices(0), shuffled.indices(1))


def test_stream_reproducible(digits):
    def make(seed):
        return Stream(digits.train_x, digits.train_y, 64, coherence=0.8, seed=seed)

    a, b, c = make(11), make(11), make(12)
    np.testing.assert_array_equal(a.indices(0), b.indices(0))
    assert not np.array_equal(a.indices(0), c.indices(0))
    assert not np.array_equal(a.indices(0), a.indices(1))

    # Epoch 3 does not depend on which epochs were drawn before it.
    for epoch in range(3):
        list(a.epoch(epoch))
    np.testing.assert_array_equal(a.indices(3), make(11).indices(3))
    xa = np.concatenate([xb for xb, _ in a.epoch(3)])
    xb = np.concatenate([xb for xb, _ in make(11).epoch(3)])
    np.testing.assert_array_equal(xa, xb)


def test_stream_seed_sequence(digits):
    root = np.random.SeedSequence(2024)
    stream = Stream(digits.train_x, digits.train_y, 64, seed=root)
    np.testing.assert_array_equal(
        stream.indices(0),
        Stream(digits.train_x, digits.train_y, 64, seed=2024).indices(0),
    )
    # Epoch e draws from the e-th spawned child of the root.
    child = np.random.SeedSequence(2024).spawn(3)[2]
    expected = epoch_order(
        digits.train_y, "chunked", 16, 1.0, np.random.default_rng(child)
    )
    np.testing.assert_array_equal(stream.indices(2), expected)


def test_stream_resume_within_epoch(digits):
    stream = Stream(digits.train_x, digits.train_y, 64, seed=4)
    full = [yb for _, yb in stream.epoch(2)]
    resumed = [yb for _, yb in stream.epoch(2, start=5)]
    assert len(resumed) == len(full) - 5
    for expected, got in zip(full[5:], resumed):
        np.testing.assert_array_equal(expected, got)
    assert list(stream.epoch(2, start=stream.n_batches)) == []
    with pytest.raises(ValueError, match="start"):
        stream.epoch(2, start=stream.n_batches + 1)


def test_stream_converts_inputs():
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    stream = Stream(x, np.arange(10) % 2, batch_size=3, chunk_size=2, seed=0)
    assert stream.n_batches == 3
    xb, yb = next(stream.epoch(0))
    assert xb.dtype == np.float32 and yb.dtype == np.int64


def test_stream_validation(digits):
    x, y = digits.train_x, digits.train_y
    with pytest.raises(ValueError, match="valid orders"):
        Stream(x, y, 64, order="sorted")
    with pytest.raises(ValueError, match="fewer than one batch"):
        Stream(x[:10], y[:10], 64)
    with pytest.raises(ValueError, match="rows"):
        Stream(x, y[:-1], 64)
    with pytest.raises(ValueError, match="coherence"):
        Stream(x, y, 64, coherence=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        Stream(x, y, 0)
    with pytest.raises(ValueError, match="epoch"):
        Stream(x, y, 64).indices(-1)


def test_module_has_no_global_random_state():
    state = np.random.get_state()[1].copy()
    chunked_order(np.arange(100) % 3, 4, np.random.default_rng(0))
    list(Stream(np.zeros((100, 2)), np.arange(100) % 3, 10, coherence=0.5).epoch(0))
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert streams.ORDERS == ("chunked", "natural", "shuffled")
