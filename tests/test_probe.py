"""LinearProbe and evaluate: the linear read-out of a frozen encoder."""

import numba
import numpy as np
import pytest

from trlsim import LinearProbe, Network, evaluate, load_dataset
from trlsim.probe import ProbeResult


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def _separable(n=400, n_features=6, n_classes=3, seed=0):
    """Gaussian blobs far apart: a linear classifier can get them all."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, n_features)) * 4.0
    y = rng.integers(0, n_classes, n)
    x = (centres[y] + rng.normal(size=(n, n_features))).astype(np.float32)
    return x, y


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --- LinearProbe --------------------------------------------------------------


def test_probe_learns_separable_data():
    x, y = _separable()
    probe = LinearProbe(6, 3, learning_rate=1e-2, batch_size=32, seed=0)
    assert probe.weights.shape == (3, 6) and probe.bias.shape == (3,)
    history = probe.fit(x, y, epochs=15)
    assert probe.score(x, y) >= 0.95
    assert history[-1]["loss"] < history[0]["loss"]
    assert probe.predict(x).shape == (400,)
    assert probe.logits(x).shape == (400, 3)


def test_history_records_every_epoch():
    x, y = _separable(n=500)
    x, y, xt, yt = x[:400], y[:400], x[400:], y[400:]
    probe = LinearProbe(6, 3, learning_rate=1e-2, seed=0)
    seen = []
    history = probe.fit(x, y, epochs=3, test=(xt, yt),
                        progress=lambda epoch, record: seen.append((epoch, record)))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert seen == [(r["epoch"], r) for r in history]
    for record in history:
        assert set(record) == {"epoch", "loss", "train_accuracy", "test_accuracy"}
        assert record["loss"] > 0
        assert 0.0 <= record["train_accuracy"] <= 1.0
        assert 0.0 <= record["test_accuracy"] <= 1.0
    # The last test accuracy is that of the final probe.
    assert history[-1]["test_accuracy"] == probe.score(xt, yt)


def test_history_without_test_has_no_test_accuracy():
    x, y = _separable()
    history = LinearProbe(6, 3, seed=0).fit(x, y, epochs=2)
    assert len(history) == 2
    assert all("test_accuracy" not in r for r in history)


def test_zero_epochs_leave_the_probe_untouched():
    x, y = _separable()
    probe = LinearProbe(6, 3, seed=0)
    weights = probe.weights.copy()
    assert probe.fit(x, y, epochs=0) == []
    np.testing.assert_array_equal(probe.weights, weights)


@pytest.mark.parametrize(
    "features, labels, match",
    [
        (np.zeros((10, 5)), np.zeros(10, int), r"shape \(N, 6\).*\(10, 5\)"),
        (np.zeros(6), np.zeros(1, int), r"shape \(N, 6\)"),
        (np.zeros((10, 6)), np.zeros(9, int), r"labels must have shape \(10,\)"),
        (np.zeros((10, 6)), np.zeros((10, 1), int), r"labels must have shape"),
        (np.zeros((10, 6)), np.full(10, 3), r"labels must lie in 0..2"),
        (np.zeros((10, 6)), np.full(10, -1), r"labels must lie in 0..2"),
    ],
    ids=["width", "1-D", "count", "2-D labels", "too high", "negative"],
)
def test_fit_checks_shapes_and_labels(features, labels, match):
    probe = LinearProbe(6, 3, seed=0)
    weights = probe.weights.copy()
    with pytest.raises(ValueError, match=match):
        probe.fit(features, labels, epochs=1)
    np.testing.assert_array_equal(probe.weights, weights)


def test_same_seed_same_probe():
    x, y = _separable()
    runs = []
    for seed in (5, 5, 6):
        probe = LinearProbe(6, 3, learning_rate=1e-2, seed=seed)
        history = probe.fit(x, y, epochs=2)
        runs.append((history, probe.weights.copy(), probe.bias.copy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    assert not np.array_equal(runs[0][1], runs[2][1])


# --- evaluate -----------------------------------------------------------------


def _manual_probe(network, dataset, layers, epochs, seed):
    train = np.concatenate(network.transform(dataset.train_x, layers), axis=1)
    test = np.concatenate(network.transform(dataset.test_x, layers), axis=1)
    probe = LinearProbe(train.shape[1], 10, learning_rate=1e-2, seed=seed)
    history = probe.fit(train, dataset.train_y, epochs, test=(test, dataset.test_y))
    return train.shape[1], history


def test_evaluate_on_digits(digits):
    net = Network([64, 16, 8], seed=0)
    weights = [layer.weights.copy() for layer in net.layers]
    memory = [layer.neurons.copy() for layer in net.layers]
    result = evaluate(net, digits, epochs=2, learning_rate=1e-2, seed=3)
    assert isinstance(result, ProbeResult)
    assert result.layers == [0, 1] and result.epochs == 2
    assert 0.0 <= result.train_accuracy <= 1.0
    assert 0.0 <= result.test_accuracy <= 1.0
    assert result.test_accuracy > 0.2  # chance is 0.1
    assert len(result.history) == 2
    assert result.history[-1]["test_accuracy"] == result.test_accuracy
    # The probe read 16 + 8 features: a hand-built probe on them agrees.
    n_features, history = _manual_probe(net, digits, [0, 1], 2, seed=3)
    assert n_features == 24
    assert history == result.history
    # The encoder stays frozen.
    assert net.n_steps == 0
    for layer, w, m in zip(net.layers, weights, memory):
        np.testing.assert_array_equal(layer.weights, w)
        np.testing.assert_array_equal(layer.neurons, m)
    record = result.to_dict()
    assert record["layers"] == [0, 1] and record["history"] == result.history


def test_evaluate_layer_subset(digits):
    net = Network([64, 16, 8], seed=0)
    result = evaluate(net, digits, epochs=1, layers=[1], learning_rate=1e-2, seed=3)
    assert result.layers == [1]
    n_features, history = _manual_probe(net, digits, [1], 1, seed=3)
    assert n_features == 8
    assert history == result.history


def test_evaluate_is_reproducible(digits):
    net = Network([64, 16], seed=0)
    a = evaluate(net, digits, epochs=1, learning_rate=1e-2, seed=1)
    b = evaluate(net, digits, epochs=1, learning_rate=1e-2, seed=1)
    assert a.to_dict() == b.to_dict()
