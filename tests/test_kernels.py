"""Compiled kernels (float32) against the float64 NumPy reference.

Tolerances: the kernels accumulate in float32, so values agree with float64 to
about 1e-6 relative. Gradients are read off an SGD step with momentum 0
(``(W_before - W_after) / lr``), which carries that float32 rounding of ``W``
divided by ``lr``: with ``lr = 1e-2`` and ``|W| < 1`` that is ~1e-5 absolute.
"""

import numpy as np
import pytest

from trlsim import Network
from trlsim.kernels import cpu
from trlsim.kernels.scalar import ACTIVATION_CODES
from trlsim.optim import kernel_params, moments
from trlsim.reference import ReferenceNetwork, activation_functions, adam, sgd

SIZES = [[37, 23, 11], [64, 32], [5, 3, 7, 2]]


def _batch(rng, rows, n_in):
    return rng.normal(size=(rows, n_in)).astype(np.float32)


@pytest.fixture(params=["cpu"])
def backend(request):
    """The backend every kernel test runs on."""
    return request.param


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
def test_forward_matches_reference(backend, activation):
    rng = np.random.default_rng(1)
    net = Network([37, 19], activation=activation, seed=3, backend=backend)
    x = _batch(rng, 9, 37)
    (z,) = net.transform(x)
    phi, _ = activation_functions(activation)
    layer = net.layers[0]
    expected = phi(x.astype(np.float64) @ layer.weights.T.astype(np.float64)
                   + layer.bias)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)


def test_memory_update_kernel():
    rng = np.random.default_rng(2)
    z_t = rng.normal(size=(13, 10)).astype(np.float32)
    neurons = np.zeros(13, dtype=[("mean", "f4"), ("var", "f4"), ("prev", "f4")])
    neurons["var"] = 1.0
    zc_t = np.empty_like(z_t)
    cpu.memory_update(z_t, neurons, 0.9, zc_t)
    z = z_t.astype(np.float64)
    np.testing.assert_allclose(neurons["mean"], z.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(neurons["var"], 0.9 + 0.1 * z.var(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(neurons["prev"], z_t[:, -1])
    np.testing.assert_allclose(zc_t, z - z.mean(axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("rule", ["trl", "trl-s"])
@pytest.mark.parametrize("lateral", ["matrix", "direct"])
def test_step_gradients_match_reference(backend, sizes, rule, lateral):
    lr = 1e-2
    net = Network(sizes, rule=rule, seed=5, optimizer="sgd", learning_rate=lr,
                  momentum=0.0, chunk_size=4, lateral=lateral, cov_sparsity=0.25,
                  activation="tanh", backend=backend)
    ref = ReferenceNetwork(net)
    rng = np.random.default_rng(0)
    for _ in range(3):
        before = [(layer.weights.copy(), layer.bias.copy(), layer.lateral.copy())
                  for layer in net.layers]
        ref_before = [(s["W"].copy(), s["b"].copy(), s["L"].copy())
                      for s in ref.layers]
        x = _batch(rng, 16, sizes[0])
        got, want = net.step(x), ref.step(x)
        for layer, st, (W0, b0, L0), (rW0, rb0, rL0), g, w in zip(
            net.layers, ref.layers, before, ref_before, got, want
        ):
            np.testing.assert_allclose((W0 - layer.weights) / lr,
                                       (rW0 - st["W"]) / lr, atol=5e-5, rtol=1e-3)
            np.testing.assert_allclose((b0 - layer.bias) / lr,
                                       (rb0 - st["b"]) / lr, atol=5e-5, rtol=1e-3)
            np.testing.assert_allclose((L0 - layer.lateral) / lr,
                                       (rL0 - st["L"]) / lr, atol=5e-5, rtol=1e-3)
            for term in ("sim", "var", "cov", "lat"):
                assert g[term] == pytest.approx(w[term], rel=1e-4, abs=1e-6)
            np.testing.assert_allclose(layer.neurons["mean"], st["mean"], atol=1e-5)
            np.testing.assert_allclose(layer.neurons["var"], st["var"], rtol=1e-5)
            np.testing.assert_allclose(layer.neurons["prev"], st["prev"], atol=1e-5)
            # Keep the two in lockstep so each step is compared from one state.
            st["W"], st["b"], st["L"] = (layer.weights.astype(float),
                                         layer.bias.astype(float),
                                         layer.lateral.astype(float))


@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid"])
def test_every_activation_through_a_step(backend, activation):
    lr = 1e-2
    net = Network([21, 17, 9], rule="trl-s", seed=2, optimizer="sgd",
                  learning_rate=lr, momentum=0.0, activation=activation,
                  backend=backend)
    ref = ReferenceNetwork(net)
    x = _batch(np.random.default_rng(4), 10, 21)
    W0 = [layer.weights.copy() for layer in net.layers]
    net.step(x)
    ref.step(x)
    for layer, st, w0 in zip(net.layers, ref.layers, W0):
        np.testing.assert_allclose((w0 - layer.weights) / lr, (w0 - st["W"]) / lr,
                                   atol=5e-5, rtol=1e-3)


@pytest.mark.parametrize("rule", ["trl", "trl-s"])
def test_adam_steps_track_reference(backend, rule):
    """Ten Adam steps in float32 stay within a few learning rates of float64.

    Adam divides by sqrt(v): where a gradient is near zero its direction, and
    so a step of up to ``lr``, can flip between float32 and float64; the bound
    allows that on a few steps.
    """
    lr = 1e-3
    net = Network([30, 20, 10], rule=rule, seed=9, learning_rate=lr, chunk_size=5,
                  backend=backend)
    ref = ReferenceNetwork(net)
    rng = np.random.default_rng(7)
    for _ in range(10):
        x = _batch(rng, 20, 30)
        net.step(x)
        ref.step(x)
    for layer, st in zip(net.layers, ref.layers):
        assert layer.optimizer_steps == st["step"] == 10
        assert np.abs(layer.weights - st["W"]).max() < 4 * lr
        assert np.median(np.abs(layer.weights - st["W"])) < 1e-3 * lr + 1e-6
        assert np.abs(layer.lateral - st["L"]).max() < 4 * lr


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_kernel_matches_reference(optimizer):
    rng = np.random.default_rng(3)
    size = 10_000  # several parallel blocks, the last one partial
    p = rng.normal(size=size).astype(np.float32)
    first, second = moments(optimizer, (size,))
    ref_p, ref_m, ref_v = p.astype(float), np.zeros(size), np.zeros(size)
    for step in range(1, 4):
        g = rng.normal(size=size).astype(np.float32)
        opt = kernel_params(optimizer, 1e-2, step, momentum=0.8, weight_decay=0.1)
        cpu.optimizer_update(p, g, first, second, opt)
        if optimizer == "adam":
            ref_p, ref_m, ref_v = adam(ref_p, g, ref_m, ref_v, step, 1e-2,
                                       weight_decay=0.1)
        else:
            ref_p, ref_m = sgd(ref_p, g, ref_m, 1e-2, momentum=0.8,
                               weight_decay=0.1)
    np.testing.assert_allclose(p, ref_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first, ref_m, rtol=1e-5, atol=1e-6)


def test_frozen_layers_keep_weights_but_update_memory(backend):
    net = Network([16, 12, 8], rule="trl-s", seed=0, train_layers=[0],
                  learning_rate=1e-2, backend=backend)
    frozen = net.layers[1]
    W, b, L = frozen.weights.copy(), frozen.bias.copy(), frozen.lateral.copy()
    learning_W = net.layers[0].weights.copy()
    x = _batch(np.random.default_rng(0), 8, 16)
    losses = net.step(x)
    np.testing.assert_array_equal(frozen.weights, W)
    np.testing.assert_array_equal(frozen.bias, b)
    np.testing.assert_array_equal(frozen.lateral, L)
    assert frozen.optimizer_steps == 0
    assert not np.array_equal(net.layers[0].weights, learning_W)
    # Its memory units followed the batch, and its loss terms were measured.
    z = net.transform(x)[1]
    assert not np.allclose(frozen.neurons["var"], 1.0)
    assert np.isfinite(losses[1]["total"])
    assert z.shape == (8, 8)


def test_lateral_kernel_loss_and_mask():
    rng = np.random.default_rng(1)
    n, B = 9, 6
    zc = rng.normal(size=(B, n)).astype(np.float32)
    zc -= zc.mean(axis=0)
    mask = (rng.random((n, n)) > 0.5).astype(np.float32)
    np.fill_diagonal(mask, 0.0)
    lateral = rng.normal(size=(n, n)).astype(np.float32)
    losses = np.zeros((n, 4), np.float32)
    first, second = moments("adam", (n, n))
    cpu.lateral_update(np.ascontiguousarray(zc.T), zc, mask, lateral.copy(), first,
                       second, kernel_params("adam", 1e-3, 1), 1.2, False, losses)
    C = zc.T.astype(float) @ zc / B
    expected = ((lateral - mask * C) ** 2).sum(axis=1) / n
    np.testing.assert_allclose(losses[:, cpu.LOSS_LAT], expected, rtol=1e-5)


def test_activation_codes_cover_the_config():
    from trlsim.config import ACTIVATIONS

    assert set(ACTIVATION_CODES) == set(ACTIVATIONS)
