"""Backends: where a network's arithmetic runs.

A backend takes a :class:`trlsim.Network`'s layers and runs the kernels of one
step on them. Every backend offers the same two operations:

``forward(layer, x, settings)``
    activations ``(B, n)`` of one layer, no learning;
``step(network, x, learning)``
    one learning step of every layer; returns, per layer, the unweighted loss
    terms ``(sim, var, cov, lat)``.

Two backends exist: :class:`CPUBackend` (Numba threads on host arrays) and
:class:`CUDABackend` (Numba CUDA kernels on arrays that stay on the GPU between
steps). ``"auto"`` picks CUDA where :mod:`numba.cuda` finds a usable GPU, else
the CPU, and says once in the log which it chose and how to pin it; ``"cuda"``
where no GPU is usable raises :class:`BackendError` naming the cause.
:mod:`numba.cuda` is imported only when a backend is chosen, never by
``import trlsim``.

Residency on the GPU
--------------------
A layer's weights, bias, lateral matrix, mask, memory units and optimizer
moments are copied to the device the first time the layer is used there and
stay there. Per step only the batch goes in and four loss sums per layer come
back. Python still sees current values: reading one of those attributes of a
:class:`~trlsim.network.Layer` copies that array back if a step changed it,
and marks it as the host's, so the next step uploads it again with whatever
Python did to it. :meth:`trlsim.Network.to_backend` moves a network, state
included, between backends.
"""

import collections
import logging
import weakref

import numba
import numpy as np

from .kernels import cpu
from .kernels.scalar import ACTIVATION_CODES, OPT_SIZE

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")


class BackendError(ValueError):
    """A backend cannot run as asked (its message says what to change)."""


_announced_auto = False


def _import_cuda():
    from numba import cuda

    return cuda


def cuda_problem():
    """Why the CUDA backend cannot run in this process, or None if it can.

    Imports :mod:`numba.cuda` (Numba's simulator, if ``NUMBA_ENABLE_CUDASIM``
    was set before that import, counts as usable).
    """
    try:
        cuda = _import_cuda()
    except Exception as err:  # ImportError, or a broken CUDA installation
        return f"numba.cuda could not be imported ({type(err).__name__}: {err})"
    try:
        if cuda.is_available():
            return None
        error = cuda.cuda_error() if hasattr(cuda, "cuda_error") else None
    except Exception as err:
        return f"numba.cuda could not start CUDA ({type(err).__name__}: {err})"
    if error:
        error = " ".join(str(error).split())
        if "NO_DEVICE" in error:
            return f"the CUDA driver found no GPU ({error})"
        return f"no usable CUDA driver ({error})"
    return (
        "the CUDA driver works but numba.cuda found no libNVVM, the CUDA "
        "compiler; install NVIDIA's numba-cuda with the CUDA toolkit wheels "
        "(pip install 'trlsim[cuda]')"
    )


def get_backend(name="auto", threads=None):
    """Return a backend instance for ``name`` ("auto", "cpu" or "cuda").

    ``threads`` sets the CPU backend's Numba threads; the CUDA backend ignores
    it. ``"auto"`` never picks Numba's CUDA simulator (it is for tests):
    ask for ``"cuda"`` to run on it.

    Raises
    ------
    BackendError
        For ``"cuda"`` where no GPU is usable (the message names the cause),
        or an unknown name.
    """
    global _announced_auto
    if name == "cpu":
        return CPUBackend(threads)
    if name == "cuda":
        problem = cuda_problem()
        if problem is not None:
            raise BackendError(
                f"backend 'cuda' cannot run here: {problem}. Use backend = "
                f'"cpu" (or "auto", which falls back to the CPU).'
            )
        return CUDABackend(threads)
    if name == "auto":
        if getattr(numba.config, "ENABLE_CUDASIM", 0):
            problem = "NUMBA_ENABLE_CUDASIM is set, and 'auto' never simulates"
        else:
            problem = cuda_problem()
        if not _announced_auto:
            if problem is None:
                logger.info(
                    "backend 'auto' chose 'cuda' (numba.cuda found a GPU); set "
                    'backend = "cuda" to pin it, or "cpu" to use the CPU'
                )
            else:
                logger.info(
                    "backend 'auto' chose 'cpu' (%s); set backend = \"cpu\" to "
                    "pin it",
                    problem,
                )
            _announced_auto = True
        if problem is None:
            return CUDABackend(threads, chosen_by_auto=True)
        return CPUBackend(threads)
    raise BackendError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")


class CPUBackend:
    """Runs the Numba CPU kernels (:mod:`trlsim.kernels.cpu`) on host arrays.

    Parameters
    ----------
    threads : int, optional
        Numba threads for the parallel kernels; all cores by default.
    """

    name = "cpu"

    def __init__(self, threads=None):
        if threads is not None:
            if threads > numba.config.NUMBA_NUM_THREADS:
                raise BackendError(
                    f"threads = {threads} is more than the "
                    f"{numba.config.NUMBA_NUM_THREADS} Numba can use here; set "
                    f"[training] threads (or --threads) to at most that"
                )
            numba.set_num_threads(threads)
        self._workspaces = {}

    def _workspace(self, layer, n_rows):
        key = (id(layer), n_rows)
        ws = self._workspaces.get(key)
        if ws is None:
            shape = (layer.n_neurons, n_rows)
            ws = {
                "a_t": np.empty(shape, np.float32),
                "z_t": np.empty(shape, np.float32),
                "zc_t": np.empty(shape, np.float32),
                "losses": np.zeros((layer.n_neurons, 4), np.float32),
            }
            self._workspaces[key] = ws
        return ws

    def forward(self, layer, x, settings):
        ws = self._workspace(layer, x.shape[0])
        cpu.forward(
            x, layer.weights, layer.bias, ACTIVATION_CODES[settings.activation],
            ws["a_t"], ws["z_t"],
        )
        return np.ascontiguousarray(ws["z_t"].T)

    def step(self, network, x, learning):
        s = network.settings
        activation = ACTIVATION_CODES[s.activation]
        rule = cpu.RULE_CODES[s.rule]
        lateral_mode = cpu.LATERAL_CODES[s.lateral]
        terms = []
        for layer in network.layers:
            learn = layer.index in learning
            ws = self._workspace(layer, x.shape[0])
            a_t, z_t, zc_t, losses = ws["a_t"], ws["z_t"], ws["zc_t"], ws["losses"]
            if learn:
                layer.optimizer_steps += 1
            step = max(layer.optimizer_steps, 1)

            cpu.forward(x, layer.weights, layer.bias, activation, a_t, z_t)
            cpu.memory_update(z_t, layer.neurons, s.var_momentum, zc_t)
            zc = np.ascontiguousarray(zc_t.T)
            w_first, w_second = layer.moments["weights"]
            b_first, b_second = layer.moments["bias"]
            cpu.local_update(
                x, a_t, z_t, zc_t, zc, layer.lateral, layer.mask, layer.neurons,
                layer.weights, layer.bias, w_first, w_second, b_first, b_second,
                s.optimizer_params(step), activation, rule, s.chunk_size,
                lateral_mode, s.c_sim, s.c_var, s.c_cov, s.tau, learn, losses,
            )
            if lateral_mode == cpu.LATERAL_MATRIX:
                l_first, l_second = layer.moments["lateral"]
                cpu.lateral_update(
                    zc_t, zc, layer.mask, layer.lateral, l_first, l_second,
                    s.optimizer_params(step, lateral=True), s.c_lat, learn, losses,
                )
            else:
                losses[:, cpu.LOSS_LAT] = 0.0
            terms.append(losses.sum(axis=0, dtype=np.float64))
            x = np.ascontiguousarray(z_t.T)
        return terms

    def online_step(self, network, x, starts, learning):
        """Learn from the rows of ``x`` one at a time (online mode).

        Layer by layer over the whole block: layer ``l`` sees the activations
        layer ``l - 1`` had for each sample, exactly as if the layers were
        interleaved sample by sample, since no layer depends on a deeper one.
        Returns per-layer ``(sim, var, cov, lat)``, means over the samples.
        """
        s = network.settings
        activation = ACTIVATION_CODES[s.activation]
        rule = cpu.ONLINE_LATERAL_CODES[s.lateral_rule]
        opt = s.optimizer_params(0, corrected=False)
        lateral_opt = s.optimizer_params(0, lateral=True, corrected=False)
        terms = []
        for layer in network.layers:
            learn = layer.index in learning
            z_seq = np.empty((x.shape[0], layer.n_neurons), np.float32)
            losses = np.zeros((layer.n_neurons, 4), np.float32)
            w_first, w_second = layer.moments["weights"]
            b_first, b_second = layer.moments["bias"]
            l_first, l_second = layer.moments["lateral"]
            cpu.online_update(
                x, starts, layer.weights, layer.bias, layer.lateral, layer.mask,
                layer.neurons, w_first, w_second, b_first, b_second, l_first,
                l_second, layer.covariance, layer.last_zc, opt, lateral_opt,
                layer.optimizer_steps + 1, activation, rule, s.shifted_lateral,
                s.segment_starts == "skip", s.c_sim, s.c_var, s.c_cov, s.c_lat,
                s.tau, s.mean_momentum, s.var_momentum, s.cov_momentum, learn,
                z_seq, losses,
            )
            if learn:
                layer.optimizer_steps += x.shape[0]
            terms.append(losses.sum(axis=0, dtype=np.float64) / x.shape[0])
            x = z_seq
        return terms


def _release(layer):
    """Copy back what a device holds of ``layer`` and detach it from there."""
    layer._to_host(*layer._SYNCED)
    layer._device = None


class _DeviceLayer:
    """One layer's arrays on the GPU, and which copy of each is the newer.

    Arrays come in groups named as the :class:`~trlsim.network.Layer`
    attributes that expose them (``moments`` holds six). Each group is in one
    of three states: ``None``, both copies equal; ``"device"``, a step changed
    it and the host copy is stale; ``"host"``, Python has had it (and may have
    edited it), so it is uploaded before the device next uses it.
    """

    GROUPS = {
        "weights": ("weights",),
        "bias": ("bias",),
        "lateral": ("lateral",),
        "mask": ("mask",),
        "neurons": ("neurons",),
        "moments": tuple(
            f"{param}_{moment}"
            for param in ("weights", "bias", "lateral")
            for moment in ("first", "second")
        ),
    }

    def __init__(self, backend, layer):
        self.backend = backend
        self._layer = weakref.ref(layer)
        cuda = backend.kernels.cuda
        self.device = {
            name: cuda.to_device(array)
            for name, array in self._host_arrays(layer).items()
        }
        self.newer = dict.fromkeys(self.GROUPS)
        self._workspaces = collections.OrderedDict()

    def _host_arrays(self, layer):
        # The private attributes: the public ones would ask for a copy back.
        memory = self.backend.kernels.memory_columns(layer._neurons)
        arrays = {
            "weights": layer._weights,
            "bias": layer._bias,
            "lateral": layer._lateral,
            "mask": layer._mask,
            "neurons": memory,
        }
        for param, (first, second) in layer._moments.items():
            arrays[f"{param}_first"] = first
            arrays[f"{param}_second"] = second
        return arrays

    def to_host(self, names):
        """Copy back the groups ``names`` where the device is newer; from now
        on the host copies count (the protocol of ``Layer._to_host``)."""
        host = None
        for group in names:
            if group not in self.GROUPS:
                continue  # arrays the host alone holds (online-mode state)
            if self.newer[group] == "device":
                host = host or self._host_arrays(self._layer())
                for name in self.GROUPS[group]:
                    self.device[name].copy_to_host(host[name])
            self.newer[group] = "host"

    def upload(self):
        """Copy to the device every group the host may have changed."""
        host = None
        for group, newer in self.newer.items():
            if newer == "host":
                host = host or self._host_arrays(self._layer())
                for name in self.GROUPS[group]:
                    self.device[name].copy_to_device(host[name])
                self.newer[group] = None

    def changed(self, groups):
        """Note that kernels have written ``groups`` on the device."""
        for group in groups:
            self.newer[group] = "device"

    def workspace(self, n_rows, learning):
        """Device buffers for a batch of ``n_rows`` (kept for a few sizes)."""
        key = (n_rows, learning)
        ws = self._workspaces.get(key)
        if ws is not None:
            self._workspaces.move_to_end(key)
            return ws
        kernels = self.backend.kernels
        n, n_in = self.device["weights"].shape
        empty = kernels.cuda.device_array
        ws = {
            "a_t": empty((n, n_rows), np.float32),
            "z_t": empty((n, n_rows), np.float32),
            "z": empty((n_rows, n), np.float32),
        }
        if learning:
            ws["zc_t"] = empty((n, n_rows), np.float32)
            ws["zc"] = empty((n_rows, n), np.float32)
            # Zeros: with the direct covariance penalty no kernel writes "lat".
            ws["losses"] = kernels.cuda.to_device(np.zeros((n, 4), np.float32))
            ws["scratch"] = kernels.scratch_arrays(n, n_in, n_rows)
        self._workspaces[key] = ws
        if len(self._workspaces) > 4:
            self._workspaces.popitem(last=False)
        return ws


class CUDABackend:
    """Runs the Numba CUDA kernels (:mod:`trlsim.kernels.cuda`) on the GPU.

    Layers stay on the device between steps (see the module notes on
    residency); kernels run one thread per neuron, in the default stream, and
    a step returns once its loss sums are back on the host.

    Parameters
    ----------
    threads : int, optional
        Numba CPU threads, used only where this backend hands work to the CPU
        (online mode, when ``chosen_by_auto``).
    chosen_by_auto : bool
        The user asked for "auto": online mode, which has no CUDA kernels,
        then runs on the CPU instead of raising.
    """

    name = "cuda"

    def __init__(self, threads=None, chosen_by_auto=False):
        from .kernels import cuda as kernels

        self.kernels = kernels
        self._threads = threads
        self._chosen_by_auto = chosen_by_auto
        self._cpu = None
        self._buffers = collections.OrderedDict()

    def _buffer(self, kind, shape, dtype):
        """A reusable device array (kept for a few shapes)."""
        key = (kind, shape, np.dtype(dtype).str)
        array = self._buffers.get(key)
        if array is None:
            array = self.kernels.cuda.device_array(shape, dtype)
            self._buffers[key] = array
            if len(self._buffers) > 8:
                self._buffers.popitem(last=False)
        else:
            self._buffers.move_to_end(key)
        return array

    def _upload(self, kind, array):
        array = np.ascontiguousarray(array)
        device_array = self._buffer(kind, array.shape, array.dtype)
        device_array.copy_to_device(array)
        return device_array

    def _resident(self, layer):
        """``layer`` on this device, its arrays current there."""
        resident = layer._device
        if resident is not None and resident.backend is self:
            resident.upload()
            return resident
        if resident is not None:
            _release(layer)  # from another backend's device
        resident = _DeviceLayer(self, layer)
        layer._device = resident
        return resident

    def forward(self, layer, x, settings):
        k = self.kernels
        resident = self._resident(layer)
        d = resident.device
        ws = resident.workspace(x.shape[0], learning=False)
        device_x = self._upload("x", np.asarray(x, dtype=np.float32))
        k.forward(
            device_x,
            d["weights"],
            d["bias"],
            ACTIVATION_CODES[settings.activation],
            ws["a_t"],
            ws["z_t"],
        )
        k.transpose(ws["z_t"], ws["z"])
        return ws["z"].copy_to_host()

    def step(self, network, x, learning):
        k = self.kernels
        s = network.settings
        activation = ACTIVATION_CODES[s.activation]
        rule = cpu.RULE_CODES[s.rule]
        lateral_mode = cpu.LATERAL_CODES[s.lateral]
        layers = network.layers

        # Every layer's optimizer hyper-parameters travel in one copy.
        opts = np.empty((len(layers), 2, OPT_SIZE))
        for i, layer in enumerate(layers):
            if layer.index in learning:
                layer.optimizer_steps += 1
            step = max(layer.optimizer_steps, 1)
            opts[i, 0] = s.optimizer_params(step)
            opts[i, 1] = s.optimizer_params(step, lateral=True)
        device_opts = self._upload("opts", opts)
        device_x = self._upload("x", x)
        sums = self._buffer("sums", (len(layers), 4), np.float64)

        for i, layer in enumerate(layers):
            learn = layer.index in learning
            resident = self._resident(layer)
            d = resident.device
            ws = resident.workspace(x.shape[0], learning=True)
            k.forward(
                device_x, d["weights"], d["bias"], activation, ws["a_t"], ws["z_t"]
            )
            k.memory_update(ws["z_t"], d["neurons"], s.var_momentum, ws["zc_t"])
            k.transpose(ws["zc_t"], ws["zc"])
            k.local_update(
                device_x,
                ws["a_t"],
                ws["z_t"],
                ws["zc_t"],
                ws["zc"],
                d["lateral"],
                d["mask"],
                d["neurons"],
                d["weights"],
                d["bias"],
                d["weights_first"],
                d["weights_second"],
                d["bias_first"],
                d["bias_second"],
                device_opts[i, 0],
                activation,
                rule,
                s.chunk_size,
                lateral_mode,
                s.c_sim,
                s.c_var,
                s.c_cov,
                s.tau,
                learn,
                ws["losses"],
                ws["scratch"],
            )
            if lateral_mode == cpu.LATERAL_MATRIX:
                k.lateral_update(
                    ws["zc_t"],
                    ws["zc"],
                    d["mask"],
                    d["lateral"],
                    d["lateral_first"],
                    d["lateral_second"],
                    device_opts[i, 1],
                    s.c_lat,
                    learn,
                    ws["losses"],
                    ws["scratch"],
                )
            k.sum_losses(ws["losses"], sums[i])
            resident.changed(
                ("neurons", "weights", "bias", "lateral", "moments")
                if learn
                else ("neurons",)
            )
            k.transpose(ws["z_t"], ws["z"])
            device_x = ws["z"]
        return list(sums.copy_to_host())

    def online_step(self, network, x, starts, learning):
        """Online mode has no CUDA kernels: the CPU runs it when "auto" chose
        this backend; asked for by name, it raises NotImplementedError."""
        if not self._chosen_by_auto:
            raise NotImplementedError(
                "online mode (one sample per step) has CPU kernels only: its "
                "samples are sequential, which the CUDA backend does not "
                'implement. Use backend = "cpu" (or "auto") for online runs.'
            )
        if self._cpu is None:
            logger.info("online mode runs on the CPU: backend 'auto' hands it over")
            self._cpu = CPUBackend(self._threads)
        for layer in network.layers:
            _release(layer)
        return self._cpu.online_step(network, x, starts, learning)
