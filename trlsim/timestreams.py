"""Streams with real time in them: transformed images, image rows, user arrays.

:class:`trlsim.streams.Stream` makes "time" out of labels (chunks of one
class). The streams here carry time of their own, as the natural streams of
the trlsim specification (sections 4, 7 and 8) do:

* :class:`TransformStream` shows each image for a few frames while it drifts,
  turns or zooms slowly, so neighbouring frames share what should be learned;
* :class:`RowStream` reads each image row by row (MNIST: 28 steps of 28
  pixels), the recurrent task of section 8;
* :class:`ArrayStream` replays a user's own arrays (``.npy``, ``.npz``, HDF5)
  in their order.

They follow the protocol of :class:`~trlsim.streams.Stream` (``n_batches``,
``n_features``, ``epoch(e, start=0)`` yielding ``(xb, yb)`` batches,
``len``) and add ``segment_starts(e)``: a bool array over
the rows of epoch ``e``, True where a new segment begins, so that the
invariance term does not pair that row with the one before.
:func:`label_segment_starts` gives the same for a label-chunked ``Stream``.

Frames are made one batch at a time; an epoch is never materialised, and
``epoch(e, start=k)`` computes where row ``k * batch_size`` falls instead of
generating and discarding the rows before it. All randomness comes from the
seed, one seed sequence per epoch as in :meth:`Stream.epoch_rng`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import h5py
import numba
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "ArrayStream",
    "ROW_ORDERS",
    "RowStream",
    "TRANSFORMS",
    "TransformStream",
    "affine_warp",
    "label_segment_starts",
    "warp_matrix",
]

#: Names accepted by :class:`TransformStream`.
TRANSFORMS = ("drift", "rotate", "scale", "mixed")

#: Names accepted by :class:`RowStream`.
ROW_ORDERS = ("natural", "shuffled")

#: MNIST's mean and standard deviation of pixel/255 (specification, section 4).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# Segments whose transformations are drawn together from one seed sequence;
# any segment's parameters cost one block to draw, whatever came before.
_PARAMETER_BLOCK = 4096

# Frames rendered per call of the compiled warp.
_RENDER_FRAMES = 512

# Rows read at a time from a file, in bytes: amortises per-read overhead of
# h5py and memory maps at batch size 1 without loading a large file whole.
_READ_BYTES = 1 << 22

_NPY_SUFFIXES = (".npy",)
_NPZ_SUFFIXES = (".npz",)
_HDF5_SUFFIXES = (".h5", ".hdf5")


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _check_epoch(epoch) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)):
        raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
    if epoch < 0:
        raise ValueError(f"epoch must be a non-negative integer, got {epoch}")
    return int(epoch)


def _seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(seed)


def _child(root: np.random.SeedSequence, *keys: int) -> np.random.SeedSequence:
    """The seed sequence ``root`` would spawn at ``keys``, built without spawning."""
    return np.random.SeedSequence(
        root.entropy,
        spawn_key=tuple(root.spawn_key) + tuple(int(k) for k in keys),
        pool_size=root.pool_size,
    )


def _check_images(images, name: str = "images") -> tuple[np.ndarray, float]:
    """Validate images and return them with the factor that maps them to [0, 1].

    Integer images are raw pixels in [0, 255]; floating-point images must
    already lie in [0, 1]. The array is kept as given (no float copy), so a
    ``uint8`` dataset costs one byte a pixel.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"{name} must be 3-D (N, H, W), got shape {images.shape}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{name} must not be empty, got shape {images.shape}")
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise ValueError(
                f"integer {name} must be raw pixels in [0, 255], got values in "
                f"[{images.min()}, {images.max()}]"
            )
        return images, 1.0 / 255.0
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise ValueError(f"{name} contain NaN or infinite values")
        if images.min() < 0.0 or images.max() > 1.0:
            raise ValueError(
                f"floating-point {name} must be scaled to [0, 1], got values in "
                f"[{images.min():g}, {images.max():g}]; pass raw pixels as an "
                "integer array (uint8) or divide by 255"
            )
        return images, 1.0
    raise ValueError(f"{name} must be integer or floating-point, got {images.dtype}")


def _check_norm(mean: float, std: float) -> tuple[float, float]:
    mean, std = float(mean), float(std)
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0.0):
        raise ValueError(f"need a finite mean and a positive std, got {mean}, {std}")
    return mean, std


def _optional_labels(labels, n: int) -> np.ndarray:
    """int64 labels of length ``n``, or all -1 when ``labels`` is None."""
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(
            f"labels has {labels.shape[0]} entries but there are {n} samples"
        )
    return labels.astype(np.int64)


def warp_matrix(shape, shift=(0.0, 0.0), angle=0.0, scale=1.0) -> np.ndarray:
    """Output-to-input matrices of affine transforms about the image centre.

    The transform scales by ``scale`` and turns by ``angle`` about the centre
    ``c = ((W - 1) / 2, (H - 1) / 2)``, then moves by ``shift``: a point ``p``
    of the input, in ``(x, y) = (column, row)`` coordinates, goes to
    ``q = c + s R (p - c) + d``. Warping samples the input at the inverse
    image of each output pixel, ``p = c + R^-1 (q - c - d) / s``, so the
    matrices returned are that inverse map, ready for :func:`affine_warp`.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` of the images.
    shift : array_like, shape (..., 2)
        ``(dx, dy)`` in pixels: positive ``dx`` moves the image right
        (towards higher columns), positive ``dy`` down (towards higher rows).
    angle : array_like, shape (...)
        In degrees; positive turns the image anticlockwise as displayed with
        row 0 at the top (the way :func:`np.rot90` turns it).
    scale : array_like, shape (...)
        Zoom factor; above 1 enlarges the image.

    Returns
    -------
    np.ndarray of float64, shape (..., 2, 3)
        ``[x_in, y_in] = A @ [x_out, y_out, 1]``; the leading shape is the
        broadcast of the arguments' leading shapes.
    """
    height, width = shape
    shift = np.asarray(shift, dtype=np.float64)
    angle = np.deg2rad(np.asarray(angle, dtype=np.float64))
    scale = np.asarray(scale, dtype=np.float64)
    if shift.shape[-1:] != (2,):
        raise ValueError(f"shift must have shape (..., 2), got {shift.shape}")
    if np.any(scale <= 0.0):
        raise ValueError("scale must be positive")

    lead = np.broadcast_shapes(shift.shape[:-1], angle.shape, scale.shape)
    dx = np.broadcast_to(shift[..., 0], lead)
    dy = np.broadcast_to(shift[..., 1], lead)
    cos = np.broadcast_to(np.cos(angle) / scale, lead)
    sin = np.broadcast_to(np.sin(angle) / scale, lead)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0

    # With rows growing downwards, an anticlockwise turn on screen by a maps
    # (x, y) to (x cos a + y sin a, -x sin a + y cos a); its inverse is below.
    matrix = np.empty(lead + (2, 3), dtype=np.float64)
    matrix[..., 0, 0] = cos
    matrix[..., 0, 1] = -sin
    matrix[..., 1, 0] = sin
    matrix[..., 1, 1] = cos
    ux = cx + dx
    uy = cy + dy
    matrix[..., 0, 2] = cx - (cos * ux - sin * uy)
    matrix[..., 1, 2] = cy - (sin * ux + cos * uy)
    return matrix


def affine_warp(images, matrices) -> np.ndarray:
    """Warp images through output-to-input affine maps, bilinear, zero padded.

    Output pixel ``(row i, column j)`` of image ``f`` takes the bilinear
    interpolation of ``images[f]`` at ``(x, y) = A_f @ (j, i, 1)``; the four
    neighbours that fall outside the image count as 0. Integer shifts
    therefore move pixels exactly, and the identity returns the image.

    Parameters
    ----------
    images : array_like, shape (F, H, W)
        Images, any real type; computed in ``float32``.
    matrices : array_like, shape (F, 2, 3)
        One output-to-input map per image (see :func:`warp_matrix`).

    Returns
    -------
    np.ndarray of float32, shape (F, H, W)
        A new array.
    """
    images = np.asarray(images, dtype=np.float32)
    matrices = np.asarray(matrices, dtype=np.float64)
    if images.ndim != 3:
        raise ValueError(f"images must be 3-D (F, H, W), got shape {images.shape}")
    n_frames, height, width = images.shape
    if matrices.shape != (n_frames, 2, 3):
        raise ValueError(
            f"matrices must have shape ({n_frames}, 2, 3), got {matrices.shape}"
        )

    rows, cols = np.indices((height, width), dtype=np.float64).reshape(2, 1, -1)
    src_x = matrices[:, 0, 0:1] * cols + matrices[:, 0, 1:2] * rows
    src_x += matrices[:, 0, 2:3]
    src_y = matrices[:, 1, 0:1] * cols + matrices[:, 1, 1:2] * rows
    src_y += matrices[:, 1, 2:3]

    x0 = np.floor(src_x)
    y0 = np.floor(src_y)
    fx = (src_x - x0).astype(np.float32)
    fy = (src_y - y0).astype(np.float32)
    x0 = x0.astype(np.intp)
    y0 = y0.astype(np.intp)
    flat = images.reshape(n_frames, -1)

    def corner(y, x):
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        index = np.clip(y, 0, height - 1) * width + np.clip(x, 0, width - 1)
        values = np.take_along_axis(flat, index, axis=1)
        return np.where(inside, values, np.float32(0.0))

    top = (1 - fx) * corner(y0, x0) + fx * corner(y0, x0 + 1)
    bottom = (1 - fx) * corner(y0 + 1, x0) + fx * corner(y0 + 1, x0 + 1)
    out = (1 - fy) * top + fy * bottom
    return out.reshape(n_frames, height, width)


@numba.njit(cache=True)
def _render_frames(images, image_index, matrices, pixel_scale, mean, std, out):
    """Warp, normalise and flatten frames: :func:`affine_warp` fused and compiled.

    For frame ``f`` with ``A = matrices[f]`` and ``I = images[image_index[f]]``,
    output pixel ``(i, j)`` is ``(s * bilinear(I, A @ (j, i, 1)) - mean) / std``
    with ``s = pixel_scale``, neighbours outside ``I`` counting as 0, written
    to ``out[f, i * W + j]``.

    Parameters
    ----------
    images : array (N, H, W), any real type
        Read only.
    image_index : int64 array (F,)
        Image of each frame.
    matrices : float64 array (F, 2, 3)
        Output-to-input maps, as :func:`warp_matrix` makes them.
    pixel_scale, mean, std : float
        Normalisation.
    out : float32 array (F, H * W)
        Written. Serial; frames are independent, so safe to split across
        threads by frame.
    """
    height = images.shape[1]
    width = images.shape[2]
    for f in range(image_index.shape[0]):
        image = images[image_index[f]]
        a = matrices[f]
        for i in range(height):
            for j in range(width):
                x = a[0, 0] * j + a[0, 1] * i + a[0, 2]
                y = a[1, 0] * j + a[1, 1] * i + a[1, 2]
                x0 = math.floor(x)
                y0 = math.floor(y)
                fx = x - x0
                fy = y - y0
                ix = int(x0)
                iy = int(y0)

                v00 = v01 = v10 = v11 = 0.0
                if 0 <= iy < height:
                    if 0 <= ix < width:
                        v00 = image[iy, ix]
                    if 0 <= ix + 1 < width:
                        v01 = image[iy, ix + 1]
                if 0 <= iy + 1 < height:
                    if 0 <= ix < width:
                        v10 = image[iy + 1, ix]
                    if 0 <= ix + 1 < width:
                        v11 = image[iy + 1, ix + 1]

                top = (1.0 - fx) * v00 + fx * v01
                bottom = (1.0 - fx) * v10 + fx * v11
                value = (1.0 - fy) * top + fy * bottom
                out[f, i * width + j] = (value * pixel_scale - mean) / std


class _TimeStream:
    """What the streams share: batches, lengths, checks of ``start``."""

    batch_size: int

    @property
    def n_rows(self) -> int:
        """Rows (frames, image rows, samples) in one epoch, before batching."""
        raise NotImplementedError(
            f"{type(self).__name__} must define n_rows, the rows of one epoch"
        )

    @property
    def n_batches(self) -> int:
        """Batches per epoch, ``n_rows // batch_size`` (a partial batch is dropped)."""
        return self.n_rows // self.batch_size

    def __len__(self) -> int:
        return self.n_batches

    def _check_start(self, start) -> int:
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        if not 0 <= start <= self.n_batches:
            raise ValueError(
                f"start must lie in 0..{self.n_batches}, the batches per epoch; "
                f"got {start}"
            )
        return int(start)

    def _periodic_starts(self, period: int) -> np.ndarray:
        rows = np.arange(self.n_batches * self.batch_size)
        return rows % period == 0


class TransformStream(_TimeStream):
    """Images shown over several frames while they drift, turn or zoom slowly.

    An epoch is ``segments`` segments of ``frames`` frames. Each segment shows
    one image (the images are visited in a fresh random permutation each
    epoch, starting a new permutation when ``segments`` exceeds ``N``) under a
    slow transformation drawn for that segment, which starts at the identity
    on frame 0 and grows linearly to its full size on the last frame:

    * ``"drift"``: a translation along a uniformly random direction, by a
      distance uniform in ``[0, max_shift]`` pixels over the segment, in
      sub-pixel steps;
    * ``"rotate"``: a turn about the centre by an angle uniform in
      ``[-max_angle, max_angle]`` degrees;
    * ``"scale"``: a zoom to a factor log-uniform in ``scale_range``
      (geometric steps, so every frame stays within the range);
    * ``"mixed"``: all three at once.

    Frames are warped as :func:`affine_warp` warps (bilinear, zero padding:
    the background is pixel 0), by a compiled equivalent, then normalised,
    ``(pixel / 255 - mean) / std``, and flattened to ``H * W`` values. They
    are rendered a few hundred at a time, whatever the batch size.

    Parameters
    ----------
    images : array_like, shape (N, H, W)
        Integer images are raw pixels in [0, 255] (MNIST as
        :func:`trlsim.data.read_idx` returns it); floating-point images must
        already be scaled to [0, 1]. Kept as given, not copied to float.
    labels : array_like of int, shape (N,), optional
        Label of each image, given to every frame of it (for the probe;
        training uses none). Frames are labelled -1 when omitted.
    frames : int, optional
        Frames per segment.
    transform : {"drift", "rotate", "scale", "mixed"}, optional
        The kind of slow transformation.
    segments : int, optional
        Segments per epoch; ``N`` by default (each image once).
    batch_size : int, optional
        Frames per batch; batches run across segment boundaries.
    seed : int or np.random.SeedSequence, optional
        Root of all randomness; epoch ``e`` draws from seed sequences derived
        from it and ``e`` only, so any epoch can be regenerated on its own.
    max_shift : float, optional
        Largest drift, in pixels, over one segment.
    max_angle : float, optional
        Largest turn, in degrees, over one segment.
    scale_range : tuple of float, optional
        ``(low, high)`` zoom factors, with ``low <= 1 <= high``.
    mean, std : float, optional
        Normalisation of pixel / 255 (MNIST's by default).

    Notes
    -----
    Each epoch yields ``n_batches = segments * frames // batch_size``
    batches; the frames of a final partial batch are dropped. With
    ``frames = 1`` every frame is the untransformed image.
    """

    def __init__(
        self,
        images,
        labels=None,
        frames: int = 10,
        transform: str = "drift",
        segments: int | None = None,
        batch_size: int = 1,
        seed: int | np.random.SeedSequence = 0,
        max_shift: float = 4.0,
        max_angle: float = 15.0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
    ):
        self.images, self._pixel_scale = _check_images(images)
        n_images = self.images.shape[0]
        self.labels = _optional_labels(labels, n_images)
        self.frames = _check_positive_int(frames, "frames")
        if transform not in TRANSFORMS:
            raise ValueError(
                f"unknown transform {transform!r}; valid transforms are {TRANSFORMS}"
            )
        self.transform = transform
        if segments is None:
            segments = n_images
        self.segments = _check_positive_int(segments, "segments")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.seed_sequence = _seed_sequence(seed)

        self.max_shift = float(max_shift)
        self.max_angle = float(max_angle)
        if not (math.isfinite(self.max_shift) and self.max_shift >= 0.0):
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        if not (math.isfinite(self.max_angle) and self.max_angle >= 0.0):
            raise ValueError(f"max_angle must be >= 0, got {max_angle}")
        low, high = (float(v) for v in scale_range)
        if not 0.0 < low <= 1.0 <= high < math.inf:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= 1 <= high, "
                f"got {scale_range}"
            )
        self.scale_range = (low, high)
        self.mean, self.std = _check_norm(mean, std)

        if self.n_batches == 0:
            raise ValueError(
                f"{self.n_rows} frames ({self.segments} segments of {self.frames}) "
                f"are fewer than one batch of {self.batch_size}"
            )

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of one frame."""
        return self.images.shape[1], self.images.shape[2]

    @property
    def n_rows(self) -> int:
        """Frames per epoch, ``segments * frames``."""
        return self.segments * self.frames

    @property
    def n_features(self) -> int:
        """Length of one frame, ``H * W``."""
        return self.images.shape[1] * self.images.shape[2]

    def segment_starts(self, epoch: int) -> np.ndarray:
        """True at the first frame of each segment, every ``frames`` rows.

        Parameters
        ----------
        epoch : int
            Epoch number (the layout is the same in every epoch).

        Returns
        -------
        np.ndarray of bool, shape (n_batches * batch_size,)
        """
        _check_epoch(epoch)
        return self._periodic_starts(self.frames)

    def segment_images(self, epoch: int) -> np.ndarray:
        """Index of the image each segment of an epoch shows (int64, (segments,))."""
        epoch = _check_epoch(epoch)
        return self._images_of(epoch, np.arange(self.segments), {})

    def epoch(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over one epoch's batches of frames.

        Parameters
        ----------
        epoch : int
            Epoch number, from 0.
        start : int, optional
            First batch to yield; the segment and frame of its first row are
            computed directly, nothing before it is generated.

        Yields
        ------
        xb : np.ndarray of float32, shape (batch_size, H * W)
            Normalised frames, a new C-contiguous array.
        yb : np.ndarray of int64, shape (batch_size,)
            Label of each frame's image, or -1.
        """
        epoch = _check_epoch(epoch)
        start = self._check_start(start)
        return self._batches(epoch, start)

    def _batches(self, epoch: int, start: int):
        permutations: dict[int, np.ndarray] = {}
        parameters: dict[int, np.ndarray] = {}
        size = self.batch_size
        # Frames are rendered a few hundred at a time: per-call overhead would
        # dominate at batch size 1.
        per_chunk = max(1, _RENDER_FRAMES // size)
        for first in range(start, self.n_batches, per_chunk):
            last = min(first + per_chunk, self.n_batches)
            rows = np.arange(first * size, last * size)
            segment = rows // self.frames
            frame = rows - segment * self.frames
            image = self._images_of(epoch, segment, permutations)
            matrices = self._matrices(epoch, segment, frame, parameters)

            frames = np.empty((rows.shape[0], self.n_features), dtype=np.float32)
            _render_frames(
                self.images,
                image,
                matrices,
                self._pixel_scale,
                self.mean,
                self.std,
                frames,
            )
            labels = self.labels[image]
            for b in range(last - first):
                batch = slice(b * size, (b + 1) * size)
                yield frames[batch].copy(), labels[batch].copy()

    def _images_of(self, epoch, segment, cache) -> np.ndarray:
        """Image shown by each segment; ``cache`` keeps the permutations drawn."""
        n_images = self.images.shape[0]
        cycle = segment // n_images
        image = np.empty(segment.shape, dtype=np.int64)
        for c in np.unique(cycle):
            if c not in cache:
                # Only the permutations still ahead are kept.
                for old in [k for k in cache if k < c]:
                    del cache[old]
                rng = np.random.default_rng(_child(self.seed_sequence, epoch, 0, c))
                cache[c] = rng.permutation(n_images)
            here = cycle == c
            image[here] = cache[c][segment[here] - c * n_images]
        return image

    def _parameters_of(self, epoch, segment, cache) -> np.ndarray:
        """Uniform draws (direction, distance, angle, zoom) of each segment."""
        block = segment // _PARAMETER_BLOCK
        draws = np.empty(segment.shape + (4,), dtype=np.float64)
        for k in np.unique(block):
            if k not in cache:
                for old in [j for j in cache if j < k]:
                    del cache[old]
                rng = np.random.default_rng(_child(self.seed_sequence, epoch, 1, k))
                cache[k] = rng.random((_PARAMETER_BLOCK, 4))
            here = block == k
            draws[here] = cache[k][segment[here] - k * _PARAMETER_BLOCK]
        return draws

    def _matrices(self, epoch, segment, frame, cache) -> np.ndarray:
        """Output-to-input matrix of each frame."""
        draws = self._parameters_of(epoch, segment, cache)
        progress = frame / (self.frames - 1) if self.frames > 1 else 0.0 * frame
        n = segment.shape[0]
        shift = np.zeros((n, 2))
        angle = np.zeros(n)
        scale = np.ones(n)
        kind = self.transform
        if kind in ("drift", "mixed"):
            direction = 2.0 * np.pi * draws[:, 0]
            distance = self.max_shift * draws[:, 1] * progress
            shift = np.stack(
                [distance * np.cos(direction), distance * np.sin(direction)], axis=1
            )
        if kind in ("rotate", "mixed"):
            angle = self.max_angle * (2.0 * draws[:, 2] - 1.0) * progress
        if kind in ("scale", "mixed"):
            low, high = np.log(self.scale_range)
            scale = np.exp((low + (high - low) * draws[:, 3]) * progress)
        return warp_matrix(self.image_shape, shift, angle, scale)


class RowStream(_TimeStream):
    """Images read row by row: each image gives ``H`` consecutive rows of ``W``.

    The recurrent task of the specification (section 8) reads MNIST this way,
    28 steps of 28 pixels. Each image is one segment: a new one begins at its
    first row.

    Parameters
    ----------
    images : array_like, shape (N, H, W)
        Integer images are raw pixels in [0, 255]; floating-point images must
        already be scaled to [0, 1].
    labels : array_like of int, shape (N,), optional
        Label of each image, given to each of its rows; -1 when omitted.
    batch_size : int, optional
        Rows per batch (28: one MNIST image per batch when the images are in
        step with the batches).
    seed : int or np.random.SeedSequence, optional
        Root of the shuffled order's randomness (see :meth:`epoch_rng`).
    order : {"natural", "shuffled"}, optional
        Images in their own order, or in a new random order each epoch.
    mean, std : float, optional
        Normalisation of pixel / 255 (MNIST's by default).

    Notes
    -----
    Each epoch yields ``n_batches = N * H // batch_size`` batches; the rows of
    a final partial batch are dropped.
    """

    def __init__(
        self,
        images,
        labels=None,
        batch_size: int = 28,
        seed: int | np.random.SeedSequence = 0,
        order: str = "natural",
        mean: float = MNIST_MEAN,
        std: float = MNIST_STD,
    ):
        self.images, self._pixel_scale = _check_images(images)
        self.labels = _optional_labels(labels, self.images.shape[0])
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        if order not in ROW_ORDERS:
            raise ValueError(f"unknown order {order!r}; valid orders are {ROW_ORDERS}")
        self.order = order
        self.seed_sequence = _seed_sequence(seed)
        self.mean, self.std = _check_norm(mean, std)
        if self.n_batches == 0:
            raise ValueError(
                f"{self.n_rows} rows are fewer than one batch of {self.batch_size}"
            )

    @property
    def n_rows(self) -> int:
        """Rows per epoch, ``N * H``."""
        return self.images.shape[0] * self.images.shape[1]

    @property
    def n_features(self) -> int:
        """Pixels in one row, ``W``."""
        return self.images.shape[2]

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        """A fresh generator for one epoch, built as :meth:`Stream.epoch_rng` is."""
        epoch = _check_epoch(epoch)
        return np.random.default_rng(_child(self.seed_sequence, epoch))

    def indices(self, epoch: int) -> np.ndarray:
        """The order of the ``N`` images in an epoch (int64)."""
        n_images = self.images.shape[0]
        if self.order == "natural":
            _check_epoch(epoch)
            return np.arange(n_images, dtype=np.int64)
        return self.epoch_rng(epoch).permutation(n_images).astype(np.int64)

    def segment_starts(self, epoch: int) -> np.ndarray:
        """True at the first row of each image, every ``H`` rows.

        Returns
        -------
        np.ndarray of bool, shape (n_batches * batch_size,)
        """
        _check_epoch(epoch)
        return self._periodic_starts(self.images.shape[1])

    def epoch(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over one epoch's batches of rows.

        Parameters
        ----------
        epoch : int
            Epoch number, from 0.
        start : int, optional
            First batch to yield; earlier ones are skipped.

        Yields
        ------
        xb : np.ndarray of float32, shape (batch_size, W)
            Normalised rows, a new C-contiguous array.
        yb : np.ndarray of int64, shape (batch_size,)
            Label of each row's image, or -1.
        """
        start = self._check_start(start)
        return self._batches(self.indices(epoch), start)

    def _batches(self, order: np.ndarray, start: int):
        height = self.images.shape[1]
        size = self.batch_size
        for b in range(start, self.n_batches):
            rows = np.arange(b * size, (b + 1) * size)
            image = order[rows // height]
            pixels = self.images[image, rows % height].astype(np.float32)
            pixels *= np.float32(self._pixel_scale)
            xb = (pixels - np.float32(self.mean)) / np.float32(self.std)
            yield xb, self.labels[image]


def label_segment_starts(stream, epoch: int) -> np.ndarray:
    """Segment starts of a label-ordered :class:`~trlsim.streams.Stream`.

    A segment is a run of equal labels in the epoch's order: a new one begins
    at row 0 and wherever a row's label differs from the previous row's. Two
    chunks of the same class that happen to follow each other form one
    segment; a sample swapped in by the coherence forms its own.

    Parameters
    ----------
    stream : trlsim.streams.Stream
        Any object with ``y``, ``indices(epoch)``, ``n_batches`` and
        ``batch_size`` as ``Stream`` has.
    epoch : int
        Epoch number, from 0.

    Returns
    -------
    np.ndarray of bool, shape (n_batches * batch_size,)
        Over the rows the epoch yields (the dropped tail is left out).
    """
    n_rows = stream.n_batches * stream.batch_size
    labels = np.asarray(stream.y)[stream.indices(epoch)[:n_rows]]
    starts = np.empty(n_rows, dtype=bool)
    starts[:1] = True
    np.not_equal(labels[1:], labels[:-1], out=starts[1:])
    return starts


def _row_shape(shape, where: str) -> tuple[int, int]:
    """``(N, n_features)`` of inputs of the given shape, 3-D images flattened."""
    if len(shape) not in (2, 3):
        raise ValueError(
            f"{where} must be 2-D (N, n_features) or 3-D (N, H, W) images, got "
            f"shape {tuple(shape)}"
        )
    n_rows = int(shape[0])
    n_features = int(np.prod(shape[1:]))
    if n_rows == 0 or n_features == 0:
        raise ValueError(f"{where} is empty, shape {tuple(shape)}")
    return n_rows, n_features


def _check_numeric(dtype, where: str) -> None:
    dtype = np.dtype(dtype)
    if not (
        dtype == np.bool_
        or np.issubdtype(dtype, np.integer)
        or np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(f"{where} must hold real numbers, got dtype {dtype}")


def _check_finite(rows: np.ndarray, first_row: int, where: str) -> None:
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        row = first_row + int(np.argmax(bad))
        raise ValueError(f"{where}: row {row} contains NaN or infinite values")


def _segment_flags(starts, n_rows: int) -> np.ndarray:
    """A bool mask (N,) from a mask or from start indices; row 0 always starts."""
    flags = np.zeros(n_rows, dtype=bool)
    if starts is not None:
        starts = np.asarray(starts)
        if starts.ndim != 1:
            raise ValueError(f"starts must be 1-D, got shape {starts.shape}")
        if starts.dtype == np.bool_:
            if starts.shape[0] != n_rows:
                raise ValueError(
                    f"starts is a mask of {starts.shape[0]} entries but there "
                    f"are {n_rows} samples"
                )
            flags[:] = starts
        elif starts.size == 0 or np.issubdtype(starts.dtype, np.integer):
            starts = starts.astype(np.int64)
            if starts.size and (starts.min() < 0 or starts.max() >= n_rows):
                raise ValueError(
                    f"starts holds indices outside 0..{n_rows - 1}: "
                    f"[{starts.min()}, {starts.max()}]"
                )
            flags[starts] = True
        else:
            raise ValueError(
                f"starts must be a bool mask (N,) or integer start indices, "
                f"got dtype {starts.dtype}"
            )
    flags[:1] = True
    return flags


class _MemoryRows:
    """Rows held in memory, already float32 and checked."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def open(self):
        return contextlib.nullcontext(lambda a, b: self.x[a:b])


class _LazyRows:
    """Rows read on demand from a memory-mapped ``.npy`` or an HDF5 dataset.

    Converted to float32 and checked for NaN as they are read, since checking
    up front would read the whole file.
    """

    def __init__(self, path: Path, key: str | None, n_features: int, where: str):
        self.path = path
        self.key = key
        self.n_features = n_features
        self.where = where

    @contextlib.contextmanager
    def open(self):
        if self.key is None:
            source = np.load(self.path, mmap_mode="r", allow_pickle=False)
            yield self._reader(source)
        else:
            with h5py.File(self.path, "r") as file:
                yield self._reader(file[self.key])

    def _reader(self, source):
        def read(a, b):
            rows = np.asarray(source[a:b], dtype=np.float32)
            rows = rows.reshape(b - a, self.n_features)
            _check_finite(rows, a, self.where)
            return rows

        return read


def _pick_key(names, key, others, path: Path, kind: str) -> str:
    """The array ``key`` names, or the only one left when ``key`` is None."""
    listing = ", ".join(repr(n) for n in names) or "none"
    if key is None:
        left = [n for n in names if n not in others]
        if len(left) == 1:
            return left[0]
        raise ValueError(
            f"{path} holds {len(names)} {kind}s ({listing}); name the inputs "
            "with key="
        )
    if key not in names:
        raise ValueError(f"{path} has no {kind} {key!r}; {kind}s available: {listing}")
    return key


def _describe(path, key, labels_key=None, starts_key=None) -> str:
    """``path`` and the arrays read from it, for error messages."""
    named = [("x", key), ("labels", labels_key), ("starts", starts_key)]
    keys = ", ".join(f"{role}={name!r}" for role, name in named if name is not None)
    return f"{path} ({keys})" if keys else str(path)


def _hdf5_datasets(file: h5py.File) -> list[str]:
    names: list[str] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            names.append(name)

    file.visititems(visit)
    return names


class ArrayStream(_TimeStream):
    """A user's own arrays, replayed in their order every epoch.

    Parameters
    ----------
    x : array_like, shape (N, n_features) or (N, H, W)
        Inputs; 3-D images are flattened to ``H * W`` values. Converted once
        to contiguous ``float32`` (no copy when they already are) and checked
        for NaN and infinite values.
    labels : array_like of int, shape (N,), optional
        Returned with each batch (for the probe); -1 when omitted.
    starts : array_like, optional
        Where segments begin: a bool mask of shape (N,), or integer indices of
        the first row of each segment. Row 0 always begins one, since nothing
        precedes it in the epoch; with no ``starts`` the whole array is one
        segment.
    batch_size : int, optional
        Rows per batch.

    Notes
    -----
    Each epoch yields ``n_batches = N // batch_size`` batches in the arrays'
    own order; the last ``N % batch_size`` rows are never shown. The order
    does not depend on the epoch number, and there is no randomness.

    See Also
    --------
    ArrayStream.from_file : the same from a ``.npy``, ``.npz`` or HDF5 file,
        read lazily where the format allows.
    """

    def __init__(self, x, labels=None, starts=None, batch_size: int = 1):
        x = np.asarray(x)
        _check_numeric(x.dtype, "x")
        n_rows, n_features = _row_shape(x.shape, "x")
        x = np.ascontiguousarray(x.reshape(n_rows, n_features), dtype=np.float32)
        # In blocks, so a large array needs no full-size temporary.
        step = max(1, _READ_BYTES // (4 * n_features))
        for a in range(0, n_rows, step):
            _check_finite(x[a : a + step], a, "x")
        self._setup(_MemoryRows(x), n_rows, n_features, labels, starts, batch_size)

    def _setup(self, rows, n_rows, n_features, labels, starts, batch_size):
        self._rows = rows
        self._n_rows = n_rows
        self._n_features = n_features
        self.labels = _optional_labels(labels, n_rows)
        self._starts = _segment_flags(starts, n_rows)
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        if self.n_batches == 0:
            raise ValueError(
                f"{n_rows} samples are fewer than one batch of {self.batch_size}"
            )

    @classmethod
    def from_file(
        cls,
        path,
        key: str | None = None,
        labels_key: str | None = None,
        starts_key: str | None = None,
        batch_size: int = 1,
    ) -> ArrayStream:
        """A stream of the arrays in a ``.npy``, ``.npz`` or HDF5 file.

        Parameters
        ----------
        path : str or path-like
            ``.npy`` (one array: the inputs), ``.npz``, or HDF5 (``.h5``,
            ``.hdf5``); the format is chosen by the suffix.
        key : str, optional
            The inputs' array name in a ``.npz``, or dataset path in an HDF5
            file (``"frames"``, ``"/session1/frames"``). May be left out when
            the file holds one array besides those named by ``labels_key``
            and ``starts_key``.
        labels_key, starts_key : str, optional
            Arrays in the same file holding the labels and the segment starts
            (a bool mask or start indices; see :class:`ArrayStream`). Not
            available for ``.npy``, which holds one array: pass those to
            :class:`ArrayStream` with ``np.load(path, mmap_mode="r")``.
        batch_size : int, optional
            Rows per batch.

        Returns
        -------
        ArrayStream

        Raises
        ------
        FileNotFoundError
            If ``path`` does not exist or is not a file.
        ValueError
            If the format is unknown, a key is missing (the error lists the
            keys available), the inputs are not 2-D or 3-D or not numeric, or
            labels or starts do not match the inputs. NaN and infinite values
            are reported when the rows holding them are read.

        Notes
        -----
        ``.npy`` files are memory-mapped and HDF5 datasets sliced a few
        megabytes at a time as the epoch advances, so a large file is never
        loaded whole; labels and starts are read at once. A ``.npz`` archive
        is compressed or zipped, so its inputs are loaded into memory.
        """
        path = Path(path)
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise FileNotFoundError(f"{path} {what}")
        suffix = path.suffix.lower()
        if suffix in _NPY_SUFFIXES:
            return cls._from_npy(path, key, labels_key, starts_key, batch_size)
        if suffix in _NPZ_SUFFIXES:
            return cls._from_npz(path, key, labels_key, starts_key, batch_size)
        if suffix in _HDF5_SUFFIXES:
            return cls._from_hdf5(path, key, labels_key, starts_key, batch_size)
        known = _NPY_SUFFIXES + _NPZ_SUFFIXES + _HDF5_SUFFIXES
        raise ValueError(
            f"{path}: unknown format {suffix!r}; expected one of {', '.join(known)}"
        )

    @classmethod
    def _from_npy(cls, path, key, labels_key, starts_key, batch_size):
        named = {"key": key, "labels_key": labels_key, "starts_key": starts_key}
        given = [name for name, value in named.items() if value is not None]
        if given:
            raise ValueError(
                f"{path}: a .npy file holds one array, so {', '.join(given)} "
                "cannot be used; save the arrays together in a .npz or HDF5 file, "
                "or pass labels and starts to ArrayStream(np.load(path, "
                "mmap_mode='r'), ...)"
            )
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: cannot read as a .npy array ({exc})") from exc
        where = str(path)
        try:
            _check_numeric(x.dtype, "x")
            n_rows, n_features = _row_shape(x.shape, "x")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        stream = cls.__new__(cls)
        rows = _LazyRows(path, None, n_features, where)
        stream._setup(rows, n_rows, n_features, None, None, batch_size)
        return stream

    @classmethod
    def _from_npz(cls, path, key, labels_key, starts_key, batch_size):
        try:
            archive = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: cannot read as a .npz archive ({exc})") from exc
        with archive:
            names = list(archive.files)

            def load(name):
                name = _pick_key(names, name, (), path, "array")
                try:
                    return archive[name]
                except (ValueError, OSError) as exc:
                    raise ValueError(f"{path}: cannot load {name!r} ({exc})") from exc

            labels = None if labels_key is None else load(labels_key)
            starts = None if starts_key is None else load(starts_key)
            key = _pick_key(names, key, {labels_key, starts_key}, path, "array")
            x = load(key)
        try:
            return cls(x, labels=labels, starts=starts, batch_size=batch_size)
        except ValueError as exc:
            where = _describe(path, key, labels_key, starts_key)
            raise ValueError(f"{where}: {exc}") from exc

    @classmethod
    def _from_hdf5(cls, path, key, labels_key, starts_key, batch_size):
        try:
            file = h5py.File(path, "r")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read as an HDF5 file ({exc})") from exc
        with file:
            names = _hdf5_datasets(file)
            # h5py accepts "/a/b" and "a/b"; the listing holds the latter.
            keys = (key, labels_key, starts_key)
            key, labels_key, starts_key = (k and k.lstrip("/") for k in keys)
            labels = starts = None
            if labels_key is not None:
                labels_key = _pick_key(names, labels_key, (), path, "dataset")
                labels = file[labels_key][()]
            if starts_key is not None:
                starts_key = _pick_key(names, starts_key, (), path, "dataset")
                starts = file[starts_key][()]
            key = _pick_key(names, key, {labels_key, starts_key}, path, "dataset")
            shape, dtype = file[key].shape, file[key].dtype
        where = _describe(path, key, labels_key, starts_key)
        try:
            _check_numeric(dtype, "x")
            n_rows, n_features = _row_shape(shape, "x")
            stream = cls.__new__(cls)
            rows = _LazyRows(path, key, n_features, _describe(path, key))
            stream._setup(rows, n_rows, n_features, labels, starts, batch_size)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        return stream

    @property
    def n_rows(self) -> int:
        """Rows ``N`` of the inputs."""
        return self._n_rows

    @property
    def n_features(self) -> int:
        """Length of one input row."""
        return self._n_features

    def segment_starts(self, epoch: int) -> np.ndarray:
        """True where a segment begins, from ``starts`` (always at row 0).

        Returns
        -------
        np.ndarray of bool, shape (n_batches * batch_size,)
            A new array; the same in every epoch.
        """
        _check_epoch(epoch)
        return self._starts[: self.n_batches * self.batch_size].copy()

    def epoch(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Iterate over one epoch's batches, in the arrays' order.

        Parameters
        ----------
        epoch : int
            Epoch number, from 0 (the batches are the same in every epoch).
        start : int, optional
            First batch to yield; reading starts at its first row.

        Yields
        ------
        xb : np.ndarray of float32, shape (batch_size, n_features)
            A new C-contiguous array.
        yb : np.ndarray of int64, shape (batch_size,)
            Labels of the rows, or -1.
        """
        _check_epoch(epoch)
        start = self._check_start(start)
        return self._batches(start)

    def _batches(self, start: int):
        size = self.batch_size
        per_read = max(1, _READ_BYTES // (4 * self.n_features * size))
        with self._rows.open() as read:
            for first in range(start, self.n_batches, per_read):
                last = min(first + per_read, self.n_batches)
                block = read(first * size, last * size)
                for b in range(first, last):
                    a = (b - first) * size
                    xb = np.array(block[a : a + size], dtype=np.float32, order="C")
                    yield xb, self.labels[b * size : (b + 1) * size].copy()
