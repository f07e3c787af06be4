"""The Network and Layer API: construction, state, input checks, step/transform.

Kernel arithmetic against the NumPy reference is in test_kernels.py; these
tests check what the Python layer around the kernels promises.

Most tests run Numba with one thread: the machine's other cores are busy and
parallel kernels on tiny layers only pay for synchronisation. The determinism
test at the end uses every thread Numba has.
"""

import doctest
import math
import warnings

import numba
import numpy as np
import pytest

import trlsim
import trlsim.config
import trlsim.network
import trlsim.probe
import trlsim.train
from trlsim import ConfigError, Network, load_config
from trlsim.network import MEMORY_DTYPE

SIZES = [20, 12, 6]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def _batch(rows=16, n_in=SIZES[0], seed=0):
    return np.random.default_rng(seed).normal(size=(rows, n_in)).astype(np.float32)


def _state(net):
    """Copies of every array a network's layers own."""
    return [
        {
            "weights": layer.weights.copy(),
            "bias": layer.bias.copy(),
            "lateral": layer.lateral.copy(),
            "mask": layer.mask.copy(),
            "neurons": layer.neurons.copy(),
        }
        for layer in net.layers
    ]


def _assert_same_state(a, b):
    for la, lb in zip(a, b, strict=True):
        for key in la:
            np.testing.assert_array_equal(la[key], lb[key], err_msg=key)


# --- construction -----------------------------------------------------------


def test_same_seed_builds_identical_networks():
    a = Network(SIZES, seed=7, cov_sparsity=0.3)
    b = Network(SIZES, seed=7, cov_sparsity=0.3)
    _assert_same_state(_state(a), _state(b))


def test_different_seed_builds_different_networks():
    a = Network(SIZES, seed=7, cov_sparsity=0.3)
    b = Network(SIZES, seed=8, cov_sparsity=0.3)
    for la, lb in zip(a.layers, b.layers):
        assert not np.array_equal(la.weights, lb.weights)
        assert not np.array_equal(la.bias, lb.bias)
        assert not np.array_equal(la.lateral, lb.lateral)
        assert not np.array_equal(la.mask, lb.mask)


def test_layers_get_independent_draws():
    # Two layers of the same shape must not start from the same numbers.
    net = Network([10, 10, 10], seed=0)
    assert not np.array_equal(net.layers[0].weights, net.layers[1].weights)


def test_initial_values_lie_within_the_spec_bounds():
    net = Network([50, 40, 9], seed=1)
    for layer in net.layers:
        bound = 1.0 / math.sqrt(layer.n_inputs)
        assert np.abs(layer.weights).max() <= bound
        assert np.abs(layer.bias).max() <= bound
        assert np.abs(layer.lateral).max() <= 1.0 / math.sqrt(layer.n_neurons)
        # Uniform draws fill the range, not a small part of it.
        assert np.abs(layer.weights).max() > 0.9 * bound
        assert layer.weights.min() < 0 < layer.weights.max()


def test_shapes_and_dtypes():
    net = Network(SIZES, seed=0)
    assert net.layer_sizes == SIZES
    assert len(net.layers) == 2
    for index, layer in enumerate(net.layers):
        n_in, n = SIZES[index], SIZES[index + 1]
        assert layer.index == index
        assert (layer.n_inputs, layer.n_neurons) == (n_in, n)
        assert layer.weights.shape == (n, n_in)
        assert layer.bias.shape == (n,)
        assert layer.lateral.shape == (n, n)
        assert layer.mask.shape == (n, n)
        for array in (layer.weights, layer.bias, layer.lateral, layer.mask):
            assert array.dtype == np.float32
            assert array.flags.c_contiguous
        assert layer.optimizer_steps == 0
    assert net.n_steps == 0
    assert net.learning == {0, 1}


def test_neurons_are_memory_records_with_unit_variance():
    net = Network(SIZES, seed=0)
    for layer in net.layers:
        neurons = layer.neurons
        assert neurons.dtype == MEMORY_DTYPE
        assert neurons.dtype.names == ("mean", "var", "prev")
        assert neurons.shape == (layer.n_neurons,)
        np.testing.assert_array_equal(neurons["var"], 1.0)
        np.testing.assert_array_equal(neurons["mean"], 0.0)
        np.testing.assert_array_equal(neurons["prev"], 0.0)


def test_mask_without_sparsity_is_all_but_the_diagonal():
    net = Network([8, 7], seed=0)
    expected = np.ones((7, 7), np.float32)
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_array_equal(net.layers[0].mask, expected)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_cov_sparsity_masks_about_that_fraction(sparsity):
    n = 64
    net = Network([8, n], seed=3, cov_sparsity=sparsity)
    mask = net.layers[0].mask
    assert set(np.unique(mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.diag(mask), 0.0)
    off_diagonal = mask[~np.eye(n, dtype=bool)]
    # 4,032 entries: the standard error of the fraction is below 0.008.
    assert abs((off_diagonal == 0).mean() - sparsity) < 0.05


# --- parameter setters --------------------------------------------------------


@pytest.mark.parametrize("name", ["weights", "bias", "lateral"])
def test_setters_copy_into_the_float32_array(name):
    net = Network(SIZES, seed=0)
    layer = net.layers[0]
    array = getattr(layer, name)
    value = np.random.default_rng(1).normal(size=array.shape)  # float64
    setattr(layer, name, value)
    after = getattr(layer, name)
    assert after is array  # same buffer: the kernels keep using it
    assert after.dtype == np.float32
    np.testing.assert_array_equal(after, value.astype(np.float32))
    value[...] = 0.0  # the layer holds a copy, not the caller's array
    assert np.any(after != 0.0)


def test_setters_accept_nested_lists():
    net = Network([3, 2], seed=0)
    net.layers[0].bias = [0.5, -0.25]
    np.testing.assert_array_equal(net.layers[0].bias, [0.5, -0.25])


@pytest.mark.parametrize("name", ["weights", "bias", "lateral"])
def test_setters_reject_wrong_shape(name):
    layer = Network(SIZES, seed=0).layers[0]
    before = getattr(layer, name).copy()
    wrong = np.zeros(getattr(layer, name).shape + (1,))
    with pytest.raises(ValueError, match=rf"{name} must have shape"):
        setattr(layer, name, wrong)
    np.testing.assert_array_equal(getattr(layer, name), before)


@pytest.mark.parametrize("name", ["weights", "bias", "lateral"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_setters_reject_non_finite_values(name, bad):
    layer = Network(SIZES, seed=0).layers[0]
    before = getattr(layer, name).copy()
    value = before.copy()
    value.flat[0] = bad
    with pytest.raises(ValueError, match=rf"{name} holds NaN or infinite"):
        setattr(layer, name, value)
    np.testing.assert_array_equal(getattr(layer, name), before)


def test_in_place_edits_reach_transform():
    net = Network([5, 4, 3], seed=0)
    x = _batch(6, 5)
    layer = net.layers[0]
    layer.weights[...] = 0.0
    layer.bias[...] = 1.5
    (z0,) = net.transform(x, layers=[0])
    np.testing.assert_array_equal(z0, 1.5)
    layer.bias[2] = -1.0  # ReLU cuts it off
    (z0,) = net.transform(x, layers=[0])
    np.testing.assert_array_equal(z0[:, 2], 0.0)
    np.testing.assert_array_equal(z0[:, [0, 1, 3]], 1.5)


def test_lateral_matrix_does_not_change_the_forward_pass():
    net = Network(SIZES, seed=0)
    x = _batch()
    before = net.transform(x)
    for layer in net.layers:
        layer.lateral = np.full(layer.lateral.shape, 3.0)
    for a, b in zip(before, net.transform(x)):
        np.testing.assert_array_equal(a, b)


# --- input checks -------------------------------------------------------------


def test_step_rejects_wrong_width():
    net = Network(SIZES, seed=0)
    with pytest.raises(ValueError, match=r"shape \(rows, 20\).*got shape \(16, 19\)"):
        net.step(_batch(16, 19))
    with pytest.raises(ValueError, match=r"shape \(rows, 20\)"):
        net.transform(_batch(16, 21))


def test_step_rejects_one_dimensional_input():
    net = Network(SIZES, seed=0)
    with pytest.raises(ValueError, match=r"shape \(rows, 20\).*got shape \(20,\)"):
        net.step(np.zeros(20, np.float32))
    with pytest.raises(ValueError, match="shape"):
        net.step(np.zeros((2, 4, 20), np.float32))


def test_transform_takes_one_row_as_a_batch_of_one():
    net = Network(SIZES, seed=0)
    x = _batch(3)
    z = net.transform(x[0])
    assert [a.shape for a in z] == [(1, 12), (1, 6)]
    np.testing.assert_allclose(z[1][0], net.transform(x)[1][0], rtol=1e-6)


def test_step_needs_two_rows():
    net = Network(SIZES, seed=0)
    with pytest.raises(ValueError, match="at least 2 consecutive rows.*got 1"):
        net.step(_batch(1))
    assert net.n_steps == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_step_rejects_non_finite_input_naming_the_row(bad):
    net = Network(SIZES, seed=0)
    before = _state(net)
    x = _batch()
    x[5, 3] = bad
    x[9, 0] = bad
    message = r"NaN or infinite.*2 row\(s\), first at row 5"
    with pytest.raises(ValueError, match=message):
        net.step(x)
    with pytest.raises(ValueError, match="first at row 5"):
        net.transform(x)
    _assert_same_state(before, _state(net))
    assert net.n_steps == 0


@pytest.mark.parametrize(
    "x",
    [
        np.full((4, 20), "a"),
        np.zeros((4, 20), dtype=object),
        np.zeros((4, 20), dtype=complex),
        np.zeros((4, 20), dtype=bool),
    ],
    ids=["str", "object", "complex", "bool"],
)
def test_step_rejects_non_numeric_input(x):
    net = Network(SIZES, seed=0)
    with pytest.raises(TypeError, match="real numbers, got dtype"):
        net.step(x)


def test_step_accepts_other_real_dtypes():
    net = Network(SIZES, seed=0)
    x = np.random.default_rng(0).integers(-3, 4, size=(8, 20))
    losses = net.step(x)  # int64 input is converted
    assert all(math.isfinite(d["total"]) for d in losses)
    net.step(x.astype(np.float64))
    assert net.n_steps == 2


def test_trl_batch_must_be_a_multiple_of_chunk_size():
    net = Network(SIZES, rule="trl", chunk_size=4, seed=0)
    message = r"chunks of 4.*18 rows.*multiple of chunk_size"
    with pytest.raises(ValueError, match=message):
        net.step(_batch(18))
    assert net.n_steps == 0
    net.step(_batch(12))  # three chunks
    assert net.n_steps == 1


def test_trl_s_takes_any_batch_size():
    net = Network(SIZES, rule="trl-s", chunk_size=4, seed=0)
    net.step(_batch(7))
    net.step(_batch(2))
    assert net.n_steps == 2


def test_unknown_setting_suggests_the_closest_name():
    message = r"Network\(\).*'learnig_rate'.*did you mean 'learning_rate'"
    with pytest.raises(ConfigError, match=message):
        Network(SIZES, learnig_rate=1e-3)


def test_setting_of_another_table_says_where_it_lives():
    with pytest.raises(ConfigError, match=r"'epochs'.*\[training\]"):
        Network(SIZES, epochs=3)


def test_bad_setting_value_is_a_config_error():
    with pytest.raises(ConfigError, match="c_var"):
        Network(SIZES, c_var=-1.0)
    with pytest.raises(ConfigError, match="train_layers"):
        Network(SIZES, train_layers=[2])


def test_hidden_keyword_is_rejected():
    with pytest.raises(TypeError, match="first argument.*not as hidden="):
        Network([20, 12], hidden=[12, 6])


@pytest.mark.parametrize("first", [[20], 20], ids=["list", "int"])
def test_hidden_keyword_hint_reaches_the_usual_mistake(first):
    with pytest.raises(TypeError, match="not as hidden="):
        Network(first, hidden=[12, 6])


@pytest.mark.parametrize("sizes", [[20], [], [20, 0], [20, 4.0], [20, True]])
def test_bad_layer_sizes(sizes):
    with pytest.raises(ValueError, match="layer_sizes"):
        Network(sizes)


# --- transform ----------------------------------------------------------------


def test_transform_returns_every_layer():
    net = Network([20, 12, 6, 3], seed=0)
    x = _batch(10)
    z = net.transform(x)
    assert [a.shape for a in z] == [(10, 12), (10, 6), (10, 3)]
    assert all(a.dtype == np.float32 for a in z)
    assert all((a >= 0).all() for a in z)  # ReLU
    # Each layer feeds the next.
    layer = net.layers[1]
    expected = np.maximum(z[0].astype(np.float64) @ layer.weights.T + layer.bias, 0)
    np.testing.assert_allclose(z[1], expected, rtol=1e-5, atol=1e-6)


def test_transform_layer_subset():
    net = Network([20, 12, 6, 3], seed=0)
    x = _batch(10)
    full = net.transform(x)
    (only,) = net.transform(x, layers=[1])
    np.testing.assert_array_equal(only, full[1])
    picked = net.transform(x, layers=[2, 0])
    np.testing.assert_array_equal(picked[0], full[2])
    np.testing.assert_array_equal(picked[1], full[0])
    assert net.transform(x, layers=[]) == []
    with pytest.raises(IndexError, match="layer 3 does not exist"):
        net.transform(x, layers=[3])
    with pytest.raises(IndexError, match="layer -1 does not exist"):
        net.transform(x, layers=[-1])


def test_transform_in_blocks_matches_one_block():
    net = Network(SIZES, seed=0)
    x = _batch(37)
    whole = net.transform(x)
    for batch_size in (1, 5, 36):
        blocks = net.transform(x, batch_size=batch_size)
        for a, b in zip(whole, blocks, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_transform_neither_learns_nor_touches_memory():
    net = Network(SIZES, seed=0)
    before = _state(net)
    net.transform(_batch(33))
    _assert_same_state(before, _state(net))
    assert net.n_steps == 0


# --- step ---------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["trl", "trl-s"])
def test_step_returns_the_weighted_sum_of_the_terms(rule):
    net = Network(SIZES, rule=rule, chunk_size=4, seed=0, c_sim=0.7, c_cov=1.3,
                  c_lat=0.4)
    losses = net.step(_batch(16))
    s = net.settings
    assert s.c_var == {"trl": 5.0, "trl-s": 2.5}[rule]  # the rule's default
    assert len(losses) == 2
    for terms in losses:
        assert set(terms) == {"sim", "var", "cov", "lat", "total"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in terms.values())
        expected = (0.7 * terms["sim"] + s.c_var * terms["var"]
                    + 1.3 * terms["cov"] + 0.4 * terms["lat"])
        assert terms["total"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
        assert terms["sim"] >= 0 and terms["lat"] >= 0 and terms["var"] <= 0


def test_default_coefficients_are_the_papers():
    net = Network(SIZES, rule="trl", seed=0)
    s = net.settings
    assert (s.c_sim, s.c_var, s.c_cov, s.c_lat, s.tau) == (1.0, 5.0, 1.0, 1.2, 1.0)
    losses = net.step(_batch(16))
    for t in losses:
        expected = t["sim"] + 5.0 * t["var"] + t["cov"] + 1.2 * t["lat"]
        assert t["total"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_step_updates_memory_units_and_counts():
    net = Network(SIZES, seed=0, learning_rate=1e-2)
    x = _batch(16)
    net.step(x)
    assert net.n_steps == 1
    assert [layer.optimizer_steps for layer in net.layers] == [1, 1]
    for layer in net.layers:
        assert not np.allclose(layer.neurons["var"], 1.0)
        assert np.all(layer.neurons["var"] >= 0)
    # The memory units hold the statistics of the activations the step saw,
    # which an untouched twin network reproduces (spec section 3, steps 2, 3, 7).
    z = Network(SIZES, seed=0).transform(x)[0].astype(np.float64)
    neurons = net.layers[0].neurons
    np.testing.assert_allclose(neurons["mean"], z.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(neurons["var"], 0.9 + 0.1 * z.var(axis=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(neurons["prev"], z[-1], rtol=1e-5, atol=1e-6)
    net.step(x)
    net.step(x)
    assert net.n_steps == 3
    assert "steps=3" in repr(net)


def test_learning_override_in_step():
    net = Network(SIZES, seed=0, learning_rate=1e-2)
    before = _state(net)
    net.step(_batch(16), learning=[1])
    after = _state(net)
    np.testing.assert_array_equal(after[0]["weights"], before[0]["weights"])
    np.testing.assert_array_equal(after[0]["lateral"], before[0]["lateral"])
    assert not np.array_equal(after[1]["weights"], before[1]["weights"])
    assert not np.array_equal(after[1]["lateral"], before[1]["lateral"])
    # Memory units follow activity whether a layer learns or not.
    assert not np.array_equal(after[0]["neurons"], before[0]["neurons"])
    assert [layer.optimizer_steps for layer in net.layers] == [0, 1]
    assert net.learning == {0, 1}  # the override did not stick
    net.step(_batch(16, seed=1), learning=[])
    _assert_same_state(
        [{k: v for k, v in layer.items() if k != "neurons"} for layer in after],
        [{k: v for k, v in layer.items() if k != "neurons"} for layer in _state(net)],
    )


def test_learning_attribute_is_assignable():
    net = Network(SIZES, seed=0, learning_rate=1e-2, train_layers=[1])
    assert net.learning == {1}
    net.learning = {0}
    before = _state(net)
    net.step(_batch(16))
    after = _state(net)
    assert not np.array_equal(after[0]["weights"], before[0]["weights"])
    np.testing.assert_array_equal(after[1]["weights"], before[1]["weights"])
    np.testing.assert_array_equal(after[1]["bias"], before[1]["bias"])
    assert "learning=[0]" in repr(net)


def test_no_layer_learns_with_empty_train_layers():
    net = Network(SIZES, seed=0, learning_rate=1e-2, train_layers=[])
    before = _state(net)
    losses = net.step(_batch(16))
    after = _state(net)
    for la, lb in zip(before, after):
        for key in ("weights", "bias", "lateral"):
            np.testing.assert_array_equal(la[key], lb[key])
    assert all(math.isfinite(t["total"]) for t in losses)


def test_step_rejects_a_learning_layer_that_does_not_exist():
    net = Network(SIZES, seed=0)
    with pytest.raises((IndexError, ValueError), match="layer 5"):
        net.step(_batch(16), learning=[5])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_weight_warns_naming_the_layer_and_stays_local():
    net = Network(SIZES, seed=0)
    net.layers[1].weights[0, 0] = np.nan  # in place: the setter would refuse
    with pytest.warns(RuntimeWarning, match=r"layer 1 loss is not finite after step 1"):
        losses = net.step(_batch(16))
    # Nothing flows backward: layer 0 never sees layer 1's NaN.
    assert math.isfinite(losses[0]["total"])
    assert not math.isfinite(losses[1]["total"])
    assert np.isfinite(net.layers[0].weights).all()


def test_huge_sgd_learning_rate_warns_that_the_run_diverged():
    net = Network(SIZES, seed=0, optimizer="sgd", learning_rate=1e3)
    x = _batch(16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            net.step(x)
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning
                and "loss is not finite" in str(w.message)]
    assert messages, "a diverging run must warn"
    assert any("layer 0" in m for m in messages)
    assert all("lower learning_rate" in m for m in messages)


def test_stable_run_does_not_warn():
    net = Network(SIZES, seed=0, learning_rate=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for seed in range(3):
            net.step(_batch(16, seed=seed))


# --- from_config and doctests -------------------------------------------------


def test_from_config_builds_what_the_file_says(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text(
        "[network]\nhidden = [12, 6]\nactivation = \"tanh\"\n"
        "[rule]\nrule = \"trl\"\nc_var = 3.0\ncov_sparsity = 0.25\n"
        "[optimizer]\noptimizer = \"sgd\"\nlearning_rate = 0.01\n"
        "[data]\ndataset = \"digits\"\nbatch_size = 16\nchunk_size = 4\n"
        "[training]\nseed = 3\ntrain_layers = [0]\n"
    )
    net = Network.from_config(load_config(path))
    assert net.layer_sizes == [64, 12, 6]  # digits rows have 64 values
    s = net.settings
    assert (s.rule, s.activation, s.c_var, s.cov_sparsity) == ("trl", "tanh", 3.0, 0.25)
    assert (s.optimizer, s.learning_rate, s.chunk_size) == ("sgd", 0.01, 4)
    assert net.learning == {0}
    assert net.seed == 3
    assert net.config.source == str(path)

    same = Network([64, 12, 6], rule="trl", seed=3, activation="tanh", c_var=3.0,
                   cov_sparsity=0.25, optimizer="sgd", learning_rate=0.01,
                   chunk_size=4, train_layers=[0])
    _assert_same_state(_state(net), _state(same))

    other = Network.from_config(load_config(path), n_inputs=10)
    assert other.layer_sizes == [10, 12, 6]


def test_from_config_needs_a_config():
    with pytest.raises(TypeError, match="Config"):
        Network.from_config({"network": {"hidden": [4]}})


@pytest.mark.parametrize(
    "module",
    [
        trlsim.network,
        trlsim.train,
        trlsim.probe,
        trlsim.config,
    ],
    ids=["network", "train", "probe", "config"],
)
def test_docstring_examples_pass(module):
    result = doctest.testmod(module, verbose=False, report=False)
    assert result.attempted > 0
    assert result.failed == 0


# --- determinism --------------------------------------------------------------


def _two_steps(threads):
    numba.set_num_threads(threads)
    try:
        net = Network([24, 16, 8], rule="trl", chunk_size=4, seed=11,
                      learning_rate=1e-2, cov_sparsity=0.5)
        losses = [net.step(_batch(16, 24, seed=s)) for s in (0, 1)]
        return _state(net), losses
    finally:
        numba.set_num_threads(1)


def test_steps_are_bit_identical_across_fresh_networks_and_thread_counts():
    threads = numba.config.NUMBA_NUM_THREADS
    state_a, losses_a = _two_steps(threads)
    state_b, losses_b = _two_steps(threads)
    _assert_same_state(state_a, state_b)
    assert losses_a == losses_b
    # Each neuron is one thread's work, so the thread count changes nothing.
    state_c, losses_c = _two_steps(1)
    _assert_same_state(state_a, state_c)
    assert losses_a == losses_c
