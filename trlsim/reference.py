"""A plain NumPy implementation of one TRL step, written to be obviously right.

This is the yardstick for the compiled kernels: whole-matrix NumPy, float64 by
default, one line per equation of ``TRL_SPEC.md`` sections 2 and 3, no fusion
and no tricks. The test suite compares every kernel with it, and checks its
gradients against finite differences of :func:`layer_loss`. The benchmarks run
it in float32 as the "plain NumPy (BLAS)" reference for speed.

Symbols: ``x`` (B, n_in) input rows; ``W`` (n, n_in), ``b`` (n,), ``L``
(n, n) lateral matrix; ``M`` (n, n) covariance mask (zero diagonal); ``z``
(B, n) activations; ``m`` batch mean; ``zc = z - m``; ``C = zc^T zc / B``.
"""

from dataclasses import dataclass

import numpy as np
from math import erf, sqrt, pi

_erf = np.vectorize(erf, otypes=[np.float64])


def activation_functions(name):
    """Return ``(phi, dphi)`` for an activation name, ``dphi`` of ``a``."""
    if name == "relu":
        return (lambda a: np.maximum(a, 0.0)), (lambda a: (a > 0).astype(a.dtype))
    if name == "tanh":
        return np.tanh, (lambda a: 1.0 - np.tanh(a) ** 2)
    if name == "sigmoid":

        def sigmoid(a):
            return 1.0 / (1.0 + np.exp(-a))

        return sigmoid, (lambda a: sigmoid(a) * (1.0 - sigmoid(a)))
    if name == "gelu":

        def cdf(a):
            return 0.5 * (1.0 + _erf(a / sqrt(2.0))).astype(a.dtype)

        def gelu_slope(a):
            return cdf(a) + a * np.exp(-0.5 * a * a) / sqrt(2.0 * pi)

        return (lambda a: a * cdf(a)), gelu_slope
    raise ValueError(f"unknown activation {name!r}")


@dataclass
class LayerStep:
    """What one reference layer step produced."""

    z: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    prev: np.ndarray
    losses: dict
    grad_weights: np.ndarray
    grad_bias: np.ndarray
    grad_lateral: np.ndarray | None


def layer_step(x, W, b, L, var, M, *, rule, chunk_size, activation="relu",
               c_sim=1.0, c_var=2.5, c_cov=1.0, c_lat=1.2, tau=1.0,
               var_momentum=0.9, lateral="matrix"):
    """One layer's statistics, loss terms and gradients for a batch.

    Returns a :class:`LayerStep`; nothing is modified. ``var`` is the running
    variance before the batch. Losses are unweighted: ``sim``, ``var``,
    ``cov``, ``lat``; gradients are of the weighted total.
    """
    phi, dphi = activation_functions(activation)
    B, n = x.shape[0], W.shape[0]

    a = x @ W.T + b
    z = phi(a)
    m = z.mean(axis=0)
    var_new = var_momentum * var + (1 - var_momentum) * ((z - m) ** 2).mean(axis=0)
    zc = z - m
    C = zc.T @ zc / B
    gate = np.maximum(tau - var_new, 0.0)

    # Invariance in time.
    grad_sim = np.zeros_like(z)
    if rule == "trl":
        S = chunk_size
        chunks = z.reshape(B // S, S, n)
        d = chunks[:, 1:] - chunks[:, :-1]
        loss_sim = (d**2).mean(axis=(0, 1)).sum()
        g = (2.0 * d / d[..., 0].size).reshape(B // S, S - 1, n)
        g_chunks = grad_sim.reshape(B // S, S, n)
        g_chunks[:, 1:] += g
        g_chunks[:, :-1] -= g
    else:
        d = z[1:] - z[:-1]
        loss_sim = (d**2).mean(axis=0).sum()
        grad_sim[1:] = 2.0 * d / (B - 1)

    # Variance hinge.
    loss_var = -(gate * zc**2).mean(axis=0).sum()
    grad_var = -2.0 * gate * zc / B

    # Decorrelation.
    if lateral == "matrix":
        lat = zc @ L.T
        loss_cov = (zc * lat).mean(axis=0).sum()
        grad_cov = lat / B
        diff = L - M * C
        loss_lat = (diff**2).sum() / n
        grad_lateral = c_lat * 2.0 * diff / n
    else:
        loss_cov = (M * C**2).sum()
        grad_cov = 2.0 / B * zc @ ((M + M.T) * C)
        loss_lat = 0.0
        grad_lateral = None

    grad_z = c_sim * grad_sim + c_var * grad_var + c_cov * grad_cov
    grad_a = grad_z * dphi(a)
    return LayerStep(
        z=z,
        mean=m,
        var=var_new,
        prev=z[-1].copy(),
        losses={"sim": loss_sim, "var": loss_var, "cov": loss_cov, "lat": loss_lat},
        grad_weights=grad_a.T @ x,
        grad_bias=grad_a.sum(axis=0),
        grad_lateral=grad_lateral,
    )


def layer_loss(x, W, b, constants, *, rule, chunk_size, activation="relu",
               c_sim=1.0, c_var=2.5, c_cov=1.0, M=None, lateral="matrix"):
    """The weighted loss of one layer as a function of ``W`` and ``b``.

    ``constants`` holds the stopped-gradient quantities, computed once at the
    point of expansion: ``mean`` (m), ``gate`` (relu(tau - var)), ``lat``
    (``zc @ L.T``, matrix mode) and ``z`` (the detached previous rows of
    TRL-S). Used for finite-difference checks of :func:`layer_step`.
    """
    phi, _ = activation_functions(activation)
    B, n = x.shape[0], W.shape[0]
    z = phi(x @ W.T + b)
    zc = z - constants["mean"]
    if rule == "trl":
        chunks = z.reshape(B // chunk_size, chunk_size, n)
        sim = ((chunks[:, 1:] - chunks[:, :-1]) ** 2).mean(axis=(0, 1)).sum()
    else:
        sim = ((z[1:] - constants["z"][:-1]) ** 2).mean(axis=0).sum()
    var = -(constants["gate"] * zc**2).mean(axis=0).sum()
    if lateral == "matrix":
        cov = (zc * constants["lat"]).mean(axis=0).sum()
    else:
        cov = (M * (zc.T @ zc / B) ** 2).sum()
    return c_sim * sim + c_var * var + c_cov * cov


def adam(p, g, m, v, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """One Adam step (PyTorch's form); returns new ``(p, m, v)``."""
    beta1, beta2 = betas
    g = g + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**step)
    v_hat = v / (1 - beta2**step)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def sgd(p, g, buf, lr, momentum=0.9, weight_decay=0.0):
    """One SGD-with-momentum step (PyTorch's form); returns ``(p, buf)``."""
    buf = momentum * buf + g + weight_decay * p
    return p - lr * buf, buf


class ReferenceNetwork:
    """A whole TRL network stepped by the reference equations.

    Built from a :class:`trlsim.Network` (copying its state, in ``dtype``), it
    takes the same steps and can be compared with it at any time.
    """

    def __init__(self, network, dtype=np.float64):
        s = network.settings
        self.settings = s
        self.dtype = dtype
        self.learning = set(network.learning)
        self.layers = []
        for layer in network.layers:
            state = {
                "W": layer.weights.astype(dtype),
                "b": layer.bias.astype(dtype),
                "L": layer.lateral.astype(dtype),
                "M": layer.mask.astype(dtype),
                "mean": layer.neurons["mean"].astype(dtype),
                "var": layer.neurons["var"].astype(dtype),
                "prev": layer.neurons["prev"].astype(dtype),
                "step": layer.optimizer_steps,
            }
            for name in ("W", "b", "L"):
                state["m" + name] = np.zeros_like(state[name])
                state["v" + name] = np.zeros_like(state[name])
            self.layers.append(state)

    def step(self, x):
        """One learning step on the batch ``x``; returns per-layer losses."""
        s = self.settings
        x = np.asarray(x, dtype=self.dtype)
        losses = []
        for index, st in enumerate(self.layers):
            out = layer_step(
                x, st["W"], st["b"], st["L"], st["var"], st["M"],
                rule=s.rule, chunk_size=s.chunk_size, activation=s.activation,
                c_sim=s.c_sim, c_var=s.c_var, c_cov=s.c_cov, c_lat=s.c_lat,
                tau=s.tau, var_momentum=s.var_momentum, lateral=s.lateral,
            )
            st["mean"], st["var"], st["prev"] = out.mean, out.var, out.prev
            if index in self.learning:
                st["step"] += 1
                self._update(st, "W", out.grad_weights, s.learning_rate)
                self._update(st, "b", out.grad_bias, s.learning_rate)
                if out.grad_lateral is not None:
                    self._update(st, "L", out.grad_lateral, s.lateral_rate)
            losses.append(out.losses)
            x = out.z
        return losses

    def _update(self, st, name, grad, lr):
        s = self.settings
        if s.optimizer == "adam":
            st[name], st["m" + name], st["v" + name] = adam(
                st[name], grad, st["m" + name], st["v" + name], st["step"], lr,
                s.betas, s.eps, s.weight_decay,
            )
        else:
            st[name], st["m" + name] = sgd(
                st[name], grad, st["m" + name], lr, s.momentum, s.weight_decay
            )


class OnlineReference(ReferenceNetwork):
    """A network in online mode, stepped one sample at a time by the spec's
    section 7 equations (leaky mean, variance and covariance; ``prev`` pairs
    each sample with the one before)."""

    def __init__(self, network, dtype=np.float64):
        super().__init__(network, dtype)
        for st, layer in zip(self.layers, network.layers):
            st["C"] = layer.covariance.astype(dtype)
            st["last_zc"] = layer.last_zc.astype(dtype)
            for name, key in (("weights", "W"), ("bias", "b"), ("lateral", "L")):
                first, second = layer.moments[name]
                st["m" + key] = first.astype(dtype)
                if second.size:
                    st["v" + key] = second.astype(dtype)

    def step(self, x, start=False):
        """Learn from one sample ``x`` (n_inputs,); returns per-layer losses."""
        s = self.settings
        phi, dphi = activation_functions(s.activation)
        x = np.asarray(x, dtype=self.dtype).ravel()
        losses = []
        for index, st in enumerate(self.layers):
            a = st["W"] @ x + st["b"]
            z = phi(a)
            st["mean"] = s.mean_momentum * st["mean"] + (1 - s.mean_momentum) * z
            zc = z - st["mean"]
            st["var"] = s.var_momentum * st["var"] + (1 - s.var_momentum) * zc**2
            lat = st["L"] @ (st["last_zc"] if s.shifted_lateral else zc)
            diff = z - st["prev"]
            if start and s.segment_starts == "skip":
                diff = np.zeros_like(diff)
            gate = np.maximum(s.tau - st["var"], 0.0)
            grad_a = (2 * s.c_sim * diff - 2 * s.c_var * gate * zc
                      + s.c_cov * lat) * dphi(a)
            st["prev"] = z
            learn = index in self.learning
            if learn:
                st["step"] += 1
                self._update(st, "W", np.outer(grad_a, x), s.learning_rate)
                self._update(st, "b", grad_a, s.learning_rate)
            n = z.size
            if s.lateral_rule == "gradient":
                st["C"] = s.cov_momentum * st["C"] + (1 - s.cov_momentum) * np.outer(
                    zc, zc)
                diff_lat = st["L"] - st["M"] * st["C"]
                if learn:
                    self._update(st, "L", s.c_lat * 2 * diff_lat / n, s.lateral_rate)
            else:
                diff_lat = st["L"] - st["M"] * np.outer(zc, zc)
                if learn:
                    st["L"] = st["L"] - s.lateral_rate * diff_lat
            st["last_zc"] = zc
            losses.append({
                "sim": float((diff**2).sum()),
                "var": float(-(gate * zc**2).sum()),
                "cov": float((zc * lat).sum()),
                "lat": float((diff_lat**2).sum() / n),
            })
            x = z
        return losses
