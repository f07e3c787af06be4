"""Online mode: one sample per step, compiled block loop against NumPy."""

import numpy as np
import pytest

from trlsim import Network
from trlsim.reference import OnlineReference


def _net(**settings):
    base = dict(online=True, seed=3, learning_rate=1e-2, var_momentum=0.95,
                mean_momentum=0.9, cov_momentum=0.9, activation="tanh")
    base.update(settings)
    return Network([13, 9, 5], **base)


def _samples(n=30, width=13, seed=0):
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


@pytest.mark.parametrize("lateral_rule", ["gradient", "hebbian"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("shifted", [False, True])
def test_online_block_matches_per_sample_reference(lateral_rule, optimizer, shifted):
    net = _net(lateral_rule=lateral_rule, optimizer=optimizer, shifted_lateral=shifted,
               segment_starts="skip", cov_sparsity=0.3, lateral_learning_rate=0.05)
    ref = OnlineReference(net)
    x = _samples()
    starts = np.zeros(len(x), dtype=bool)
    starts[[0, 7, 19]] = True
    got = net.step(x, starts=starts)
    sums = [dict.fromkeys(("sim", "var", "cov", "lat"), 0.0) for _ in net.layers]
    for row, start in zip(x, starts):
        for total, losses in zip(sums, ref.step(row, start)):
            for key in total:
                total[key] += losses[key] / len(x)
    for layer, st, g, w in zip(net.layers, ref.layers, got, sums):
        # float32 against float64 over 30 sequential updates.
        np.testing.assert_allclose(layer.weights, st["W"], atol=2e-4)
        np.testing.assert_allclose(layer.lateral, st["L"], atol=2e-4)
        np.testing.assert_allclose(layer.neurons["mean"], st["mean"], atol=1e-4)
        np.testing.assert_allclose(layer.neurons["var"], st["var"], atol=1e-4)
        np.testing.assert_allclose(layer.neurons["prev"], st["prev"], atol=1e-4)
        for key in ("sim", "var", "cov", "lat"):
            assert g[key] == pytest.approx(w[key], rel=1e-3, abs=1e-5)
    assert net.n_steps == len(x)
    assert net.layers[0].optimizer_steps == len(x)


def test_block_equals_single_row_steps():
    x = _samples(25)
    block, single = _net(), _net()
    block.step(x)
    for row in x:
        single.step(row)
    for a, b in zip(block.layers, single.layers):
        for name, array in a.state().items():
            np.testing.assert_array_equal(array, b.state()[name], err_msg=name)


def test_leaky_memory_units_converge_to_the_stream_statistics():
    # Learning off: each neuron's activity is a fixed function of the input,
    # so the leaky mean and variance must settle on its true statistics.
    net = _net(train_layers=[], mean_momentum=0.999, var_momentum=0.999,
               activation="relu")
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(40_000, 13)) * 0.7 + 0.2).astype(np.float32)
    net.step(x)
    z = net.transform(x[-20_000:])[0].astype(np.float64)
    memory = net.layers[0].neurons
    np.testing.assert_allclose(memory["mean"], z.mean(axis=0), atol=0.05)
    np.testing.assert_allclose(memory["var"], z.var(axis=0), rtol=0.15, atol=0.02)


def test_hebbian_lateral_matrix_converges_to_the_off_diagonal_covariance():
    # W barely moves (tiny learning rate), L follows zc zc^T at rate 0.002.
    net = Network([6, 4], online=True, seed=0, learning_rate=1e-12,
                  lateral_rule="hebbian", lateral_learning_rate=0.002,
                  mean_momentum=0.999, var_momentum=0.999, activation="tanh")
    rng = np.random.default_rng(2)
    mixing = rng.normal(size=(6, 6))
    x = (rng.normal(size=(60_000, 6)) @ mixing * 0.5).astype(np.float32)
    net.step(x)
    z = net.transform(x[-30_000:])[0].astype(np.float64)
    cov = np.cov(z.T, bias=True)
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_allclose(net.layers[0].lateral[off], cov[off], atol=0.03)
    assert np.abs(net.layers[0].lateral[~off]).max() < 0.01  # diagonal decays


def test_online_requires_trl_s():
    from trlsim import ConfigError

    with pytest.raises(ConfigError, match="trl-s"):
        Network([4, 3], rule="trl", online=True)


def test_starts_must_match_the_rows():
    net = _net()
    with pytest.raises(ValueError, match="one flag per row"):
        net.step(_samples(5), starts=np.zeros(4, dtype=bool))


def test_drifting_digits_run_end_to_end(mnist_dir, tmp_path):
    from trlsim.config import parse_config
    from trlsim.experiment import run

    config = parse_config({
        "network": {"hidden": [32]},
        "rule": {"var_momentum": 0.99},
        "optimizer": {"learning_rate": 1e-4},
        "data": {"dataset": "mnist", "path": str(mnist_dir), "order": "drift",
                 "frames": 5, "segments": 60, "train_limit": 500,
                 "test_limit": 200},
        "training": {"epochs": 1, "threads": 1},
        "probe": {"epochs": 1, "learning_rate": 1e-3},
        "online": {"online": True, "segment_starts": "skip", "block": 100},
    })
    summary = run(config, out=tmp_path / "run")
    assert summary["status"] == "finished"
    # 60 segments of 5 frames, learned one frame per step.
    assert summary["training"]["steps"] == 300
    assert 0.0 <= summary["probe"]["test_accuracy"] <= 1.0
