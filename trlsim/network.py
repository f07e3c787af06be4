"""A TRL network: its layers' state, and one learning step at a time.

A :class:`Network` owns, per layer, the weights ``W``, bias ``b``, lateral
matrix ``L``, the covariance mask ``M``, the memory units (one record per
neuron with fields ``mean``, ``var``, ``prev``) and the optimizer moments. It
validates what comes in and hands the arithmetic to a backend
(:mod:`trlsim.backend`), so the same network runs on any of them.

Examples
--------
>>> import numpy as np, trlsim
>>> net = trlsim.Network([64, 32, 16], rule="trl-s", seed=0, learning_rate=1e-3)
>>> x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
>>> losses = net.step(x)
>>> sorted(losses[0])
['cov', 'lat', 'sim', 'total', 'var']
>>> net.layers[0].neurons["var"].shape
(32,)
>>> [z.shape for z in net.transform(x)]
[(16, 32), (16, 16)]
"""

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import optim
from .backend import get_backend
from .config import Config, settings_to_config

logger = logging.getLogger(__name__)

#: One record per neuron: the three memory units of TRL (spec section 1).
MEMORY_DTYPE = np.dtype(
    [("mean", np.float32), ("var", np.float32), ("prev", np.float32)]
)

#: Input width of the datasets trlsim reads, for building from a config.
DATASET_FEATURES = {"mnist": 784, "fashion-mnist": 784, "digits": 64}


@dataclass(frozen=True)
class Settings:
    """The learning settings a network steps with (see the configuration
    reference for each one's meaning)."""

    rule: str
    activation: str
    chunk_size: int
    c_sim: float
    c_var: float
    c_cov: float
    c_lat: float
    tau: float
    cov_sparsity: float
    lateral: str
    lateral_learning_rate: float | None
    var_momentum: float
    online: bool
    mean_momentum: float
    cov_momentum: float
    lateral_rule: str
    shifted_lateral: bool
    segment_starts: str
    optimizer: str
    learning_rate: float
    betas: tuple
    eps: float
    momentum: float
    weight_decay: float

    @classmethod
    def from_config(cls, config):
        r, o, on = config.rule, config.optimizer, config.online
        return cls(
            online=on.online,
            mean_momentum=on.mean_momentum,
            cov_momentum=on.cov_momentum,
            lateral_rule=on.lateral_rule,
            shifted_lateral=on.shifted_lateral,
            segment_starts=on.segment_starts,
            rule=r.rule,
            activation=config.network.activation,
            chunk_size=config.data.chunk_size,
            c_sim=r.c_sim,
            c_var=r.c_var,
            c_cov=r.c_cov,
            c_lat=r.c_lat,
            tau=r.tau,
            cov_sparsity=r.cov_sparsity,
            lateral=r.lateral,
            lateral_learning_rate=r.lateral_learning_rate,
            var_momentum=r.var_momentum,
            optimizer=o.optimizer,
            learning_rate=o.learning_rate,
            betas=tuple(o.betas),
            eps=o.eps,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
        )

    @property
    def lateral_rate(self):
        """Learning rate of the lateral matrix."""
        if self.lateral_learning_rate is None:
            return self.learning_rate
        return self.lateral_learning_rate

    def optimizer_params(self, step, lateral=False, corrected=True):
        """Kernel hyper-parameters for optimizer step ``step``."""
        return optim.kernel_params(
            self.optimizer,
            self.lateral_rate if lateral else self.learning_rate,
            step,
            betas=self.betas,
            eps=self.eps,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            corrected=corrected,
        )


class _Synced:
    """A :class:`Layer` array whose newest values may be on a device.

    Stored as ``_<name>``; getting or setting it first calls
    :meth:`Layer._to_host`.
    """

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        layer._to_host(self.name)
        return layer.__dict__["_" + self.name]

    def __set__(self, layer, value):
        layer._to_host(self.name)
        layer.__dict__["_" + self.name] = value


class Layer:
    """State of one TRL layer.

    Attributes
    ----------
    index : int
        Position in the network, from 0.
    n_inputs, n_neurons : int
    weights : float32 (n_neurons, n_inputs)
        ``W``. Writable: assign an array of the same shape, or edit in place.
    bias : float32 (n_neurons,)
        ``b``.
    lateral : float32 (n_neurons, n_neurons)
        ``L``, used only for learning, never in the forward pass.
    mask : float32 (n_neurons, n_neurons)
        1 where ``L`` learns the covariance, 0 on the diagonal and where
        lateral sparsity removed the entry; fixed at construction.
    neurons : structured array (n_neurons,) of :data:`MEMORY_DTYPE`
        The memory units ``mean``, ``var``, ``prev`` of each neuron.
    optimizer_steps : int
        How many updates this layer has had (Adam's bias correction).
    moments : dict
        Optimizer state, ``{"weights": (first, second), "bias": ...,
        "lateral": ...}``.

    Notes
    -----
    On a backend that keeps the arrays on a GPU, reading one of the arrays
    above copies it back if a step has changed it, and the next step uploads
    it again (edits in place included). Read the attribute again after a
    step: an array kept from before it is not updated.
    """

    def __init__(self, index, n_inputs, n_neurons, rng, settings):
        self.index = index
        self.n_inputs = n_inputs
        self.n_neurons = n_neurons

        # Spec section 3: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for W, b, L.
        bound = 1.0 / math.sqrt(n_inputs)
        self._weights = _f32(rng.uniform(-bound, bound, (n_neurons, n_inputs)))
        self._bias = _f32(rng.uniform(-bound, bound, n_neurons))
        bound = 1.0 / math.sqrt(n_neurons)
        self._lateral = _f32(rng.uniform(-bound, bound, (n_neurons, n_neurons)))
        keep = np.ones((n_neurons, n_neurons), dtype=np.float32)
        if settings.cov_sparsity > 0:
            keep[rng.random((n_neurons, n_neurons)) < settings.cov_sparsity] = 0.0
        np.fill_diagonal(keep, 0.0)
        self.mask = keep

        self.neurons = np.zeros(n_neurons, dtype=MEMORY_DTYPE)
        self.neurons["var"] = 1.0
        # Online mode only: the leaky covariance estimate (gradient rule) and
        # the previous sample's centred activity (shifted lateral input).
        online_cov = settings.online and settings.lateral_rule == "gradient"
        self.covariance = np.zeros((n_neurons, n_neurons if online_cov else 0),
                                   dtype=np.float32)
        self.last_zc = np.zeros(n_neurons, dtype=np.float32)
        self.optimizer_steps = 0
        self.moments = {
            "weights": optim.moments(settings.optimizer, self._weights.shape),
            "bias": optim.moments(settings.optimizer, self._bias.shape),
            "lateral": optim.moments(settings.optimizer, self._lateral.shape),
        }

    # Arrays a backend may hold on a device; see _to_host.
    _SYNCED = ("weights", "bias", "lateral", "mask", "neurons", "moments")
    _device = None
    mask = _Synced()
    neurons = _Synced()
    moments = _Synced()

    def _to_host(self, *names):
        """Make the host arrays ``names`` current before Python uses them.

        A backend that keeps this layer on a device (:mod:`trlsim.backend`)
        sets ``_device``; its ``to_host(names)`` copies back what the device
        changed and marks those arrays as the host's, to upload again before
        the device next uses them, since the caller may edit them in place.
        """
        if self._device is not None:
            self._device.to_host(names)

    @property
    def weights(self):
        self._to_host("weights")
        return self._weights

    @property
    def bias(self):
        self._to_host("bias")
        return self._bias

    @property
    def lateral(self):
        self._to_host("lateral")
        return self._lateral

    @weights.setter
    def weights(self, value):
        self._to_host("weights")
        self._weights[...] = _checked(value, self._weights.shape, "weights")

    @bias.setter
    def bias(self, value):
        self._to_host("bias")
        self._bias[...] = _checked(value, self._bias.shape, "bias")

    @lateral.setter
    def lateral(self, value):
        self._to_host("lateral")
        self._lateral[...] = _checked(value, self._lateral.shape, "lateral")

    def state(self):
        """Every array that defines this layer's state, by name (no copies).

        Names: ``weights``, ``bias``, ``lateral``, ``mask``, ``neurons``, the
        online-mode state ``covariance`` and ``last_zc``, and the optimizer
        moments ``<param>_first`` / ``<param>_second``; together with
        :attr:`optimizer_steps` they are all a snapshot needs.
        """
        self._to_host(*self._SYNCED)
        arrays = {"weights": self._weights, "bias": self._bias,
                  "lateral": self._lateral, "mask": self.mask,
                  "neurons": self.neurons, "covariance": self.covariance,
                  "last_zc": self.last_zc}
        for name, (first, second) in self.moments.items():
            arrays[f"{name}_first"] = first
            arrays[f"{name}_second"] = second
        return arrays

    def load_state(self, arrays, optimizer_steps):
        """Copy ``arrays`` (as :meth:`state` names them) into this layer."""
        own = self.state()
        missing = sorted(set(own) - set(arrays))
        if missing:
            raise ValueError(f"layer {self.index} state lacks {', '.join(missing)}")
        for name, target in own.items():
            value = np.asarray(arrays[name])
            if value.shape != target.shape:
                raise ValueError(
                    f"layer {self.index} {name}: expected shape {target.shape}, "
                    f"got {value.shape}"
                )
            target[...] = value
        self.optimizer_steps = int(optimizer_steps)

    def __repr__(self):
        return f"<Layer {self.index}: {self.n_inputs} -> {self.n_neurons}>"


class Network:
    """A stack of TRL layers that each learn from their own input and output.

    Parameters
    ----------
    layer_sizes : sequence of int
        Input width then each layer's number of neurons, e.g. ``[784, 512, 256]``.
    rule : {"trl", "trl-s"}
        TRL (pairs inside chunks) or TRL-S (pairs across the batch).
    seed : int
        Seeds the initial weights, biases, lateral matrices and masks.
    **settings
        Any key of the ``[network]``, ``[rule]``, ``[optimizer]`` and
        ``[online]`` tables of a run configuration, plus ``chunk_size``,
        ``batch_size``, ``train_layers`` and ``backend`` (e.g.
        ``optimizer="sgd"``, ``learning_rate=1e-3``, ``momentum=0.9``,
        ``c_var=5.0``, ``train_layers=[0]``, ``online=True``). Defaults are
        those of the configuration reference.

    Attributes
    ----------
    layers : list of Layer
    learning : set of int
        Indices of the layers that learn; the others keep their weights and
        lateral matrix (their memory units still update). Assignable.
    n_steps : int
        Learning steps taken so far.
    settings : Settings
    config : Config
        The validated configuration the network was built from.
    """

    def __init__(self, layer_sizes, rule="trl-s", seed=0, **settings):
        if "hidden" in settings:
            raise TypeError(
                "Network(): give the layer sizes as the first argument, "
                "e.g. Network([784, 512, 256]), not as hidden="
            )
        sizes = _layer_sizes(layer_sizes)
        if "chunk_size" in settings and "batch_size" not in settings:
            # The batch size matters to step() only through chunk_size; pick a
            # multiple of it near the paper's 64 so TRL's check passes.
            chunk = settings["chunk_size"]
            if isinstance(chunk, int) and chunk >= 1:
                settings["batch_size"] = chunk * max(1, round(64 / chunk))
        config = settings_to_config(
            {"hidden": list(sizes[1:]), "rule": rule, "seed": seed, **settings}
        )
        self._build(config, sizes[0])

    @classmethod
    def from_config(cls, config, n_inputs=None):
        """Build the network a run configuration describes.

        ``n_inputs`` defaults to the input width of ``config.data.dataset``.
        """
        if not isinstance(config, Config):
            raise TypeError(f"expected a trlsim Config, got {type(config).__name__}")
        if n_inputs is None:
            n_inputs = DATASET_FEATURES[config.data.dataset]
        network = cls.__new__(cls)
        network._build(config, int(n_inputs))
        return network

    def _build(self, config, n_inputs):
        self.config = config
        self.settings = Settings.from_config(config)
        self.seed = config.training.seed
        sizes = [n_inputs, *config.network.hidden]
        rngs = [
            np.random.default_rng(s)
            for s in np.random.SeedSequence(self.seed).spawn(len(sizes) - 1)
        ]
        self.layers = [
            Layer(i, sizes[i], sizes[i + 1], rngs[i], self.settings)
            for i in range(len(sizes) - 1)
        ]
        train = config.training.train_layers
        self.learning = set(range(len(self.layers)) if train is None else train)
        self.backend = get_backend(config.training.backend, config.training.threads)
        self.n_steps = 0

    def to_backend(self, name, threads=None):
        """Run from now on on backend ``name`` ("auto", "cpu" or "cuda").

        The state travels with the network: arrays a GPU holds are copied back
        first, so a network trained on the GPU can be inspected or stepped on
        the CPU, and the reverse. Returns the network.
        """
        backend = get_backend(name, threads)
        for layer in self.layers:
            layer._to_host(*layer._SYNCED)
            layer._device = None
        self.backend = backend
        return self

    @property
    def layer_sizes(self):
        return [self.layers[0].n_inputs] + [layer.n_neurons for layer in self.layers]

    def step(self, x, learning=None, starts=None):
        """Learn from a batch of consecutive stream rows.

        In minibatch mode this is one learning step on the batch (spec section
        3). In online mode (``online=True``) each row is a step of its own,
        taken in order inside compiled code (spec section 7); a single row is
        fine.

        Parameters
        ----------
        x : array (B, n_inputs)
            Consecutive rows of the stream. Minibatch mode needs ``B >= 2``,
            and for TRL a multiple of ``chunk_size`` (each block of
            ``chunk_size`` rows is one chunk).
        learning : iterable of int, optional
            Layers that learn; defaults to :attr:`learning`.
        starts : bool array (B,), optional
            Online mode: True where a new segment of the stream begins (used
            when ``segment_starts = "skip"``).

        Returns
        -------
        list of dict
            Per layer, the unweighted loss terms ``sim``, ``var``, ``cov``,
            ``lat`` (sums over neurons of the batch means; online, means over
            the rows) and ``total``, their weighted sum.
        """
        s = self.settings
        x = self._check_input(x, min_rows=1 if s.online else 2)
        if s.online:
            if starts is None:
                starts = np.zeros(x.shape[0], dtype=np.bool_)
            starts = np.ascontiguousarray(starts, dtype=np.bool_)
            if starts.shape != (x.shape[0],):
                raise ValueError(
                    f"starts must have one flag per row, shape ({x.shape[0]},); "
                    f"got {starts.shape}"
                )
        elif s.rule == "trl" and x.shape[0] % s.chunk_size:
            raise ValueError(
                f"rule 'trl' pairs rows inside chunks of {s.chunk_size}: the batch "
                f"has {x.shape[0]} rows, which is not a multiple of chunk_size"
            )
        learning = self.learning if learning is None else set(learning)
        unknown = sorted(i for i in learning if not 0 <= i < len(self.layers))
        if unknown:
            raise IndexError(
                f"cannot let layer {', '.join(map(str, unknown))} learn: the "
                f"network has layers 0..{len(self.layers) - 1}"
            )
        if s.online:
            terms = self.backend.online_step(self, x, starts, learning)
            self.n_steps += x.shape[0]
        else:
            terms = self.backend.step(self, x, learning)
            self.n_steps += 1

        result = []
        for index, (sim, var, cov, lat) in enumerate(terms):
            total = s.c_sim * sim + s.c_var * var + s.c_cov * cov + s.c_lat * lat
            values = {"sim": sim, "var": var, "cov": cov, "lat": lat, "total": total}
            if not math.isfinite(total):
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                warnings.warn(
                    f"layer {index} loss is not finite after step {self.n_steps} "
                    f"({', '.join(bad)}): the run diverged; lower learning_rate "
                    f"or raise c_var",
                    RuntimeWarning,
                    stacklevel=2,
                )
            result.append({k: float(v) for k, v in values.items()})
        return result

    def transform(self, x, layers=None, batch_size=4096):
        """Activations of every layer for ``x``, without learning.

        Parameters
        ----------
        x : array (N, n_inputs)
        layers : sequence of int, optional
            Which layers' activations to return (all by default). Deeper
            layers are computed only as far as needed.
        batch_size : int
            Rows per forward call; bounds the memory used.

        Returns
        -------
        list of float32 arrays (N, n_neurons)
        """
        x = self._check_input(x, min_rows=1)
        wanted = list(range(len(self.layers))) if layers is None else list(layers)
        for index in wanted:
            if not 0 <= index < len(self.layers):
                raise IndexError(
                    f"layer {index} does not exist: the network has layers "
                    f"0..{len(self.layers) - 1}"
                )
        depth = max(wanted) + 1 if wanted else 0
        outputs = [np.empty((x.shape[0], layer.n_neurons), np.float32)
                   for layer in self.layers[:depth]]
        for start in range(0, x.shape[0], batch_size):
            block = x[start : start + batch_size]
            for index in range(depth):
                block = self.backend.forward(self.layers[index], block, self.settings)
                outputs[index][start : start + block.shape[0]] = block
        return [outputs[i] for i in wanted]

    def _check_input(self, x, min_rows):
        n_in = self.layers[0].n_inputs
        x = np.asarray(x)
        if x.ndim == 1 and min_rows == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(
                f"input must have shape (rows, {n_in}) for this network "
                f"(layer sizes {self.layer_sizes}), got shape {x.shape}"
            )
        if x.shape[0] < min_rows:
            raise ValueError(
                f"a learning step needs at least {min_rows} consecutive rows "
                f"(the invariance term pairs each row with the one before), "
                f"got {x.shape[0]}"
            )
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(
            x.dtype, np.complexfloating
        ):
            raise TypeError(f"input must hold real numbers, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            rows = np.unique(np.nonzero(~np.isfinite(x))[0])
            raise ValueError(
                f"input holds NaN or infinite values in {rows.size} row(s), "
                f"first at row {rows[0]}"
            )
        return x

    def __repr__(self):
        sizes = "-".join(map(str, self.layer_sizes))
        return (
            f"<Network {sizes} rule={self.settings.rule!r} "
            f"learning={sorted(self.learning)} steps={self.n_steps}>"
        )


def _f32(array):
    return np.ascontiguousarray(array, dtype=np.float32)


def _checked(value, shape, name):
    value = np.asarray(value)
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    if not np.isfinite(value).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return value


def _layer_sizes(layer_sizes):
    sizes = list(layer_sizes)
    if len(sizes) < 2 or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
        for n in sizes
    ):
        raise ValueError(
            "layer_sizes must be the input width then at least one layer size, "
            f"all positive integers, e.g. [784, 512, 256]; got {layer_sizes!r}"
        )
    return [int(n) for n in sizes]
