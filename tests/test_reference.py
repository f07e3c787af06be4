"""The NumPy reference step against finite differences of its own loss."""

import numpy as np
import pytest

from trlsim.reference import adam, layer_loss, layer_step, sgd


def _problem(rule, activation, lateral, seed=0, B=12, n_in=7, n=5, S=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, n_in))
    W = rng.normal(size=(n, n_in)) * 0.5
    b = rng.normal(size=n) * 0.1
    L = rng.normal(size=(n, n)) * 0.3
    M = (rng.random((n, n)) > 0.3).astype(float)
    np.fill_diagonal(M, 0.0)
    # A running variance below tau, so the hinge is active for most neurons.
    var = rng.uniform(0.0, 1.5, size=n)
    kwargs = dict(rule=rule, chunk_size=S, activation=activation, c_sim=1.0,
                  c_var=2.5, c_cov=1.3, lateral=lateral)
    return x, W, b, L, M, var, kwargs


@pytest.mark.parametrize("rule", ["trl", "trl-s"])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "sigmoid", "relu"])
@pytest.mark.parametrize("lateral", ["matrix", "direct"])
def test_weight_gradient_matches_finite_differences(rule, activation, lateral):
    x, W, b, L, M, var, kw = _problem(rule, activation, lateral)
    out = layer_step(x, W, b, L, var, M, tau=1.0, var_momentum=0.9, c_lat=1.2, **kw)

    # Quantities behind a stop-gradient are frozen at the point of expansion.
    zc = out.z - out.mean
    constants = {
        "mean": out.mean,
        "gate": np.maximum(1.0 - out.var, 0.0),
        "lat": zc @ L.T,
        "z": out.z,
    }

    def loss(W_, b_):
        return layer_loss(x, W_, b_, constants, M=M, **kw)

    eps = 1e-6
    numeric_W = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        step = np.zeros_like(W)
        step[idx] = eps
        numeric_W[idx] = (loss(W + step, b) - loss(W - step, b)) / (2 * eps)
    numeric_b = np.array([
        (loss(W, b + eps * e) - loss(W, b - eps * e)) / (2 * eps)
        for e in np.eye(b.size)
    ])
    # ReLU's kink makes a few entries differ by chance; other activations are
    # smooth and must agree tightly.
    tol = 1e-4 if activation == "relu" else 1e-6
    np.testing.assert_allclose(out.grad_weights, numeric_W, rtol=tol, atol=tol)
    np.testing.assert_allclose(out.grad_bias, numeric_b, rtol=tol, atol=tol)


def test_loss_terms_match_their_definitions():
    x, W, b, L, M, var, kw = _problem("trl", "tanh", "matrix", B=8, S=4)
    out = layer_step(x, W, b, L, var, M, tau=1.0, var_momentum=0.9, **kw)
    z = np.tanh(x @ W.T + b)
    # Pairs (0,1), (1,2), (2,3) and (4,5), (5,6), (6,7): none across the chunks.
    pairs = [(t - 1, t) for t in range(8) if t % 4]
    sim = np.mean([((z[t] - z[s]) ** 2) for s, t in pairs], axis=0).sum()
    assert out.losses["sim"] == pytest.approx(sim)
    C = np.cov(z.T, bias=True)
    assert out.losses["lat"] == pytest.approx(((L - M * C) ** 2).sum() / 5)


def test_lateral_gradient_matches_finite_differences():
    x, W, b, L, M, var, kw = _problem("trl-s", "relu", "matrix")
    out = layer_step(x, W, b, L, var, M, tau=1.0, var_momentum=0.9, c_lat=1.2, **kw)

    def lateral_loss(L_):
        return 1.2 * layer_step(x, W, b, L_, var, M, tau=1.0, **kw).losses["lat"]

    eps = 1e-6
    numeric = np.zeros_like(L)
    for idx in np.ndindex(L.shape):
        step = np.zeros_like(L)
        step[idx] = eps
        numeric[idx] = (lateral_loss(L + step) - lateral_loss(L - step)) / (2 * eps)
    np.testing.assert_allclose(out.grad_lateral, numeric, rtol=1e-6, atol=1e-8)


def test_optimizers_follow_their_textbook_form():
    p, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    new, m, v = adam(p, g, np.zeros(2), np.zeros(2), step=1, lr=0.1)
    # The first Adam step moves each parameter by lr against the gradient sign.
    np.testing.assert_allclose(new, p - 0.1 * np.sign(g), rtol=1e-6)
    new, buf = sgd(p, g, np.ones(2), lr=0.1, momentum=0.5)
    np.testing.assert_allclose(buf, 0.5 + g)
    np.testing.assert_allclose(new, p - 0.1 * (0.5 + g))
