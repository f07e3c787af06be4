"""Sample streams: the order in which a dataset is presented, epoch by epoch.

TRL's invariance term compares each activation with the previous one, so the
order of the samples carries the "time" the rule learns from (trlsim
specification, section 4; Wiest 2025). For classification the paper builds
that order from labels: chunks of ``S`` same-class samples, classes chosen at
random in proportion to what they have left, optionally degraded by swapping
random pairs of positions (the coherence).

All randomness comes from :class:`numpy.random.Generator` objects made from
seeds passed in; nothing here touches the global ``np.random`` state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numba
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ORDERS", "Stream", "apply_coherence", "chunked_order", "epoch_order"]

#: Names accepted by :func:`epoch_order` and :class:`Stream`.
ORDERS = ("chunked", "natural", "shuffled")


@numba.njit(cache=True)
def _fill_chunks(grouped, starts, counts, chunk_size, draws, out):
    """Lay out class chunks, one chunk per uniform draw.

    For each draw ``u`` the eligible classes are those with more than
    ``chunk_size`` samples left or, once none has, those with any left. The
    class ``c`` whose cumulative remaining count first exceeds ``u * total``
    is chosen (probability ``remaining[c] / total``), and its next
    ``min(chunk_size, remaining[c])`` samples are appended to ``out``.

    Parameters
    ----------
    grouped : int64 array (N,)
        Sample indices sorted by class, shuffled within each class.
    starts, counts : int64 arrays (K,)
        Where each class begins in ``grouped`` and how many samples it has.
    chunk_size : int
        Chunk length ``S``.
    draws : float64 array (n_chunks,)
        Uniform numbers in [0, 1), one per chunk; ``n_chunks`` is
        ``sum(ceil(counts / S))``, exactly the number of chunks laid out.
    out : int64 array (N,)
        Written with the epoch's order. Serial; not safe to run in parallel.
    """
    n_classes = counts.shape[0]
    remaining = counts.copy()
    taken = np.zeros(n_classes, dtype=np.int64)
    pos = 0
    for k in range(draws.shape[0]):
        threshold = chunk_size
        total = 0
        for c in range(n_classes):
            if remaining[c] > threshold:
                total += remaining[c]
        if total == 0:
            threshold = 0
            for c in range(n_classes):
                total += remaining[c]

        target = draws[k] * total
        chosen = -1
        cumulative = 0
        for c in range(n_classes):
            if remaining[c] > threshold:
                chosen = c
                cumulative += remaining[c]
                if cumulative > target:
                    break
        # chosen falls back to the last eligible class if u * total rounded up.

        take = min(chunk_size, remaining[chosen])
        src = starts[chosen] + taken[chosen]
        out[pos : pos + take] = grouped[src : src + take]
        pos += take
        taken[chosen] += take
        remaining[chosen] -= take


@numba.njit(cache=True)
def _swap_pairs(order, first, second):
    """Swap ``order[first[k]]`` and ``order[second[k]]`` for k = 0, 1, ... in turn.

    Sequential: a later swap sees the result of earlier ones. Writes ``order``
    in place; not safe to run in parallel.
    """
    for k in range(first.shape[0]):
        i = first[k]
        j = second[k]
        value = order[i]
        order[i] = order[j]
        order[j] = value


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def chunked_order(labels, chunk_size: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's order of chunks of same-class samples.

    The samples of each class are shuffled once. Then, repeatedly, a class is
    picked at random with probability proportional to how many of its samples
    remain, among the classes with more than ``chunk_size`` left (or, when none
    has, among all classes with any left), and its next ``chunk_size`` samples
    (or all that remain, if fewer) are appended.

    So every chunk is exactly ``chunk_size`` long and starts at a multiple of
    ``chunk_size``, except in the final ragged tail, where each class that
    still has samples contributes one last chunk of at most ``chunk_size``.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class of each sample; any integer values.
    chunk_size : int
        Chunk length ``S`` (16 in the paper).
    rng : np.random.Generator
        Source of all randomness.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        A permutation of ``0 .. N-1``.
    """
    labels = _check_labels(labels)
    chunk_size = _check_positive_int(chunk_size, "chunk_size")
    n = labels.shape[0]
    if n == 0:
        return np.empty(0, dtype=np.int64)

    _, class_of, counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_of = class_of.reshape(-1)
    counts = counts.astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)

    # Sorting by class, then by a random key, shuffles every class at once.
    grouped = np.lexsort((rng.random(n), class_of)).astype(np.int64)
    n_chunks = int(np.sum(-(-counts // chunk_size)))
    draws = rng.random(n_chunks)

    order = np.empty(n, dtype=np.int64)
    _fill_chunks(grouped, starts, counts, chunk_size, draws, order)
    return order


def apply_coherence(order, coherence: float, rng: np.random.Generator) -> np.ndarray:
    """Degrade an order by swapping random pairs of positions.

    ``round((1 - coherence) * N)`` swaps are made one after another, each
    between two distinct positions drawn uniformly. Coherence 1 leaves the
    order as it is; coherence 0 makes ``N`` swaps, which leaves about
    ``exp(-2)``, 14%, of the positions untouched: close to, not exactly, a
    random order.

    Parameters
    ----------
    order : array_like of int, shape (N,)
        The order to degrade; not modified.
    coherence : float
        In [0, 1].
    rng : np.random.Generator
        Source of the swaps; not used when no swap is made.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        A new array.
    """
    coherence = float(coherence)
    if not 0.0 <= coherence <= 1.0:
        raise ValueError(f"coherence must lie in [0, 1], got {coherence}")
    order = np.array(order, dtype=np.int64)
    if order.ndim != 1:
        raise ValueError(f"order must be 1-D, got shape {order.shape}")
    n = order.shape[0]
    n_swaps = round((1.0 - coherence) * n)
    if n_swaps == 0 or n < 2:
        return order

    first = rng.integers(0, n, size=n_swaps)
    # An offset in 1..N-1 makes the second position differ from the first.
    second = (first + rng.integers(1, n, size=n_swaps)) % n
    _swap_pairs(order, first, second)
    return order


def epoch_order(
    labels,
    order: str,
    chunk_size: int,
    coherence: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One epoch's order of sample indices.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class of each sample (only ``"chunked"`` reads the values).
    order : {"chunked", "natural", "shuffled"}
        ``"chunked"``: :func:`chunked_order`; ``"natural"``: ``0 .. N-1``, for
        data whose own order is the stream (video, sensor traces);
        ``"shuffled"``: a uniformly random permutation.
    chunk_size : int
        Chunk length, used by ``"chunked"``.
    coherence : float
        In [0, 1]; :func:`apply_coherence` is applied to whichever order was
        built (with 1, the default of :class:`Stream`, nothing changes).
    rng : np.random.Generator
        Source of all randomness.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        A permutation of ``0 .. N-1``.
    """
    labels = _check_labels(labels)
    if order == "chunked":
        base = chunked_order(labels, chunk_size, rng)
    elif order == "natural":
        base = np.arange(labels.shape[0], dtype=np.int64)
    elif order == "shuffled":
        base = rng.permutation(labels.shape[0]).astype(np.int64)
    else:
        raise ValueError(f"unknown order {order!r}; valid orders are {ORDERS}")
    return apply_coherence(base, coherence, rng)


class Stream:
    """Minibatches of a dataset in TRL's stream order, epoch by epoch.

    Parameters
    ----------
    x : array_like, shape (N, n_features)
        Inputs; converted once to contiguous ``float32`` (no copy when they
        already are).
    y : array_like of int, shape (N,)
        Labels, used to build chunked orders and returned with each batch.
    batch_size : int
        Rows per batch ``B`` (64 in the paper).
    chunk_size : int, optional
        Chunk length ``S`` of the chunked order (16 in the paper).
    order : {"chunked", "natural", "shuffled"}, optional
        See :func:`epoch_order`.
    coherence : float, optional
        In [0, 1]; see :func:`apply_coherence`.
    seed : int or np.random.SeedSequence, optional
        Root of the stream's randomness. Epoch ``e`` draws from the ``e``-th
        spawned child of this seed sequence, built directly, so its order does
        not depend on which other epochs were drawn before (a resumed run sees
        the same orders). Give the stream a seed sequence of its own, e.g. one
        child of the run's root, and not one that is also spawned elsewhere.

    Notes
    -----
    Each epoch yields ``n_batches = N // batch_size`` batches: the last
    ``N % batch_size`` samples of an epoch's order are dropped, so every batch
    has exactly ``batch_size`` rows. Which samples are dropped changes from
    epoch to epoch with the order (except for ``"natural"``).
    """

    def __init__(
        self,
        x,
        y,
        batch_size: int,
        chunk_size: int = 16,
        order: str = "chunked",
        coherence: float = 1.0,
        seed: int | np.random.SeedSequence = 0,
    ):
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = _check_labels(y)
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (N, n_features), got shape {x.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]} labels")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.chunk_size = _check_positive_int(chunk_size, "chunk_size")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; valid orders are {ORDERS}")
        coherence = float(coherence)
        if not 0.0 <= coherence <= 1.0:
            raise ValueError(f"coherence must lie in [0, 1], got {coherence}")
        if x.shape[0] < self.batch_size:
            raise ValueError(
                f"{x.shape[0]} samples are fewer than one batch of {self.batch_size}"
            )

        self.x = x
        self.y = y.astype(np.int64, copy=False)
        self.order = order
        self.coherence = coherence
        if isinstance(seed, np.random.SeedSequence):
            self.seed_sequence = seed
        else:
            self.seed_sequence = np.random.SeedSequence(seed)

    @property
    def n_samples(self) -> int:
        """Number of samples ``N``."""
        return self.x.shape[0]

    @property
    def n_features(self) -> int:
        """Length of one input row."""
        return self.x.shape[1]

    @property
    def n_batches(self) -> int:
        """Batches per epoch, ``N // batch_size`` (the partial batch is dropped)."""
        return self.n_samples // self.batch_size

    def __len__(self) -> int:
        return self.n_batches

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        """A fresh generator for one epoch.

        Equal to ``np.random.default_rng(root.spawn(epoch + 1)[epoch])`` for a
        root seed sequence that has not spawned yet, but built without spawning.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        if epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
        root = self.seed_sequence
        child = np.random.SeedSequence(
            root.entropy,
            spawn_key=tuple(root.spawn_key) + (int(epoch),),
            pool_size=root.pool_size,
        )
        return np.random.default_rng(child)

    def segment_starts(self, epoch: int) -> np.ndarray:
        """Rows of an epoch where a new segment begins: where the label changes.

        Aligned with the rows :meth:`epoch` yields (``n_batches * batch_size``
        of them); row 0 always starts a segment. Online learning can skip the
        invariance term there (``[online] segment_starts = "skip"``).
        """
        labels = self.y[self.indices(epoch)[: self.n_batches * self.batch_size]]
        starts = np.ones(labels.shape[0], dtype=np.bool_)
        starts[1:] = labels[1:] != labels[:-1]
        return starts

    def indices(self, epoch: int) -> np.ndarray:
        """The order of all ``N`` sample indices in an epoch (int64)."""
        return epoch_order(
            self.y, self.order, self.chunk_size, self.coherence, self.epoch_rng(epoch)
        )

    def epoch(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over one epoch's batches.

        Parameters
        ----------
        epoch : int
            Epoch number, from 0.
        start : int, optional
            First batch to yield; earlier ones are skipped (to resume within
            an epoch).

        Yields
        ------
        xb : np.ndarray of float32, shape (batch_size, n_features)
            A new C-contiguous array; the caller may keep or modify it.
        yb : np.ndarray of int64, shape (batch_size,)
            Labels of the rows of ``xb``.
        """
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        if not 0 <= start <= self.n_batches:
            raise ValueError(
                f"start must lie in 0..{self.n_batches}, the batches per epoch; "
                f"got {start}"
            )
        order = self.indices(epoch)
        return self._batches(order, int(start))

    def _batches(self, order: np.ndarray, start: int):
        size = self.batch_size
        for b in range(start, self.n_batches):
            idx = order[b * size : (b + 1) * size]
            yield np.take(self.x, idx, axis=0), np.take(self.y, idx)
