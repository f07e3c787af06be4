"""Backends: where a network's arithmetic runs.

A backend takes a :class:`trlsim.Network`'s layers and runs the kernels of one
step on them. Every backend offers the same two operations:

``forward(layer, x, settings)``
    activations ``(B, n)`` of one layer, no learning;
``step(network, x, learning)``
    one learning step of every layer; returns, per layer, the unweighted loss
    terms ``(sim, var, cov, lat)``.

Only the CPU backend exists in this version. ``"auto"`` picks it and says so
once in the log; ``"cuda"`` raises an error that says what to use instead.
"""

import logging

import numba
import numpy as np

from .kernels import cpu
from .kernels.scalar import ACTIVATION_CODES

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "cpu", "cuda")


class BackendError(ValueError):
    """A backend cannot run as asked (its message says what to change)."""
_announced_auto = False


def get_backend(name="auto", threads=None):
    """Return a backend instance for ``name`` ("auto", "cpu" or "cuda")."""
    global _announced_auto
    if name == "cpu":
        return CPUBackend(threads)
    if name == "auto":
        if not _announced_auto:
            logger.info(
                "backend 'auto' chose 'cpu' (this version has no GPU backend); "
                "set backend = \"cpu\" to pin it"
            )
            _announced_auto = True
        return CPUBackend(threads)
    if name == "cuda":
        raise NotImplementedError(
            "backend 'cuda' is not available: this version of trlsim has CPU "
            "kernels only. Use backend = \"cpu\" (or \"auto\")."
        )
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
