"""Analysis of recorded runs: known answers on arrays, then real traces."""

import doctest

import numpy as np
import pytest
from conftest import small_recorded_config

import trlsim
from trlsim import analysis
from trlsim.experiment import run
from trlsim.record import Recorder

ALL_FIELDS = [
    "mean",
    "var",
    "prev",
    "losses",
    "weights",
    "bias",
    "lateral",
    "activations",
]


def small_config(**record):
    """A run on the bundled digits set that takes a second or two."""
    return small_recorded_config(fields=ALL_FIELDS, **record)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run's summary and trace path."""
    summary = run(small_config(), out=tmp_path_factory.mktemp("run"))
    return summary, summary["trace"]


@pytest.fixture
def trace(finished):
    with trlsim.open_trace(finished[1]) as opened:
        yield opened


def record_by_hand(path, fields, neurons=None, steps=4, every=1, **options):
    """A 16-8 network stepped ``steps`` times under a Recorder; returns it."""
    net = trlsim.Network([16, 8], seed=0)
    rng = np.random.default_rng(0)
    probe_x = rng.normal(size=(40, 16)).astype(np.float32)
    probe_y = np.arange(40) % 4
    with Recorder(
        path,
        net,
        fields=fields,
        every=every,
        neurons=neurons,
        probe_x=probe_x,
        probe_y=probe_y,
        **options
    ) as recorder:
        for _ in range(steps):
            x = rng.normal(size=(8, 16)).astype(np.float32)
            recorder.after_step(net, None, net.step(x))
    return net, probe_x


# -- arrays with known answers -------------------------------------------------


def test_receptive_fields_reshape_rows_to_images():
    weights = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)
    fields = analysis.receptive_fields(weights, (2, 3))
    assert fields.shape == (2, 2, 3)
    assert fields[1, 1, 2] == weights[1, 5]
    assert fields[0, 1, 0] == weights[0, 3]
    with pytest.raises(ValueError, match="holds 4 pixels"):
        analysis.receptive_fields(weights, (2, 2))


def test_selectivity_of_one_class_flat_and_silent_neurons():
    labels = np.array([0, 0, 1, 1, 2, 2])
    one_class = [3.0, 1.0, 0, 0, 0, 0]
    flat = [2.0] * 6
    silent = [0.0] * 6
    graded = [2.0, 2.0, 1.0, 1.0, 1.0, 1.0]  # means 2, 1, 1: (2 - 1) / (2 + 1)
    z = np.array([one_class, flat, silent, graded]).T
    selectivity, preferred = analysis.class_selectivity(z, labels, 3)
    np.testing.assert_allclose(selectivity, [1.0, 0.0, 0.0, 1 / 3])
    assert preferred[0] == 0 and preferred[2] == -1 and preferred[3] == 0


def test_selectivity_leaves_out_classes_without_samples():
    labels = np.array([0, 0, 2, 2])  # class 1 has no sample
    z = np.array([[1.0], [1.0], [0.5], [0.5]])
    selectivity, preferred = analysis.class_selectivity(z, labels, 3)
    np.testing.assert_allclose(selectivity, [(1 - 0.5) / 1.5])
    assert preferred.tolist() == [0]
    with pytest.raises(ValueError, match="at least 2 classes"):
        analysis.class_selectivity(z, np.zeros(4, int), 3)


def test_top_inputs_orders_strongest_first():
    z = np.array([[0.1, 5.0], [0.9, 1.0], [0.5, 3.0], [0.9, 0.0]])
    assert analysis.top_inputs(z, 3).tolist() == [[1, 3, 2], [0, 2, 1]]
    with pytest.raises(ValueError, match="k must lie"):
        analysis.top_inputs(z, 5)


def test_off_diagonal_energy_of_independent_and_correlated_activations():
    rng = np.random.default_rng(0)
    independent = rng.normal(size=(20000, 4))
    base = rng.normal(size=(20000, 1))
    correlated = base + 0.1 * rng.normal(size=(20000, 4))
    zero = np.zeros((4, 4))

    low = analysis.lateral_vs_covariance(zero, independent)
    high = analysis.lateral_vs_covariance(zero, correlated)
    assert low["off_energy_ratio"] < 0.01
    # Four nearly equal neurons: 12 off-diagonal entries ~ the 4 diagonal ones.
    assert high["off_energy_ratio"] == pytest.approx(3.0, rel=0.1)
    assert high["off_energy"] > 100 * low["off_energy"]
    assert high["relative_error"] == pytest.approx(1.0)  # L = 0


def test_lateral_equal_to_covariance_fits_exactly():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 5)) @ rng.normal(size=(5, 5))
    covariance = np.cov(z, rowvar=False, bias=True)
    lateral = covariance + np.diag(np.arange(5.0))  # diagonal is not compared
    result = analysis.lateral_vs_covariance(lateral, z)
    np.testing.assert_allclose(result["covariance"], covariance)
    assert result["relative_error"] == pytest.approx(0.0, abs=1e-12)
    assert result["correlation"] == pytest.approx(1.0)
    assert np.all(np.diag(result["c_off"]) == 0)


def test_lateral_mask_and_recorded_subset_pick_the_right_entries():
    rng = np.random.default_rng(2)
    z_all = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    lateral_all = rng.normal(size=(6, 6))
    mask = np.ones((6, 6))
    mask[0, 2] = mask[2, 0] = 0
    neurons = np.array([0, 2, 5])

    subset = analysis.lateral_vs_covariance(
        lateral_all[neurons], z_all[:, neurons], mask, neurons=neurons
    )
    square = analysis.lateral_vs_covariance(
        lateral_all[np.ix_(neurons, neurons)],
        z_all[:, neurons],
        mask[np.ix_(neurons, neurons)],
    )
    assert subset["compared"].sum() == 4  # 6 off-diagonal, 2 masked
    assert subset["relative_error"] == pytest.approx(square["relative_error"])
    assert subset["l_off"][0, 1] == 0 and subset["l_off"][0, 2] == lateral_all[0, 5]
    with pytest.raises(ValueError, match="pass neurons"):
        analysis.lateral_vs_covariance(lateral_all[neurons], z_all[:, neurons])


def test_moving_average_is_trailing_and_keeps_length():
    out = analysis.moving_average([1.0, 2.0, 3.0, 4.0], 2)
    np.testing.assert_allclose(out, [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(analysis.moving_average([1.0, 5.0], 1), [1.0, 5.0])
    columns = analysis.moving_average(np.array([[1.0, 0], [3, 2], [5, 4]]), 3)
    np.testing.assert_allclose(columns[-1], [3.0, 2.0])


# -- wrappers on a real trace ----------------------------------------------------


def test_receptive_fields_of_a_trace_use_the_last_weights(trace):
    fields, neurons, step = analysis.trace_receptive_fields(trace)
    weights = trace.records("weights", 0)
    assert fields.shape == (12, 8, 8)
    np.testing.assert_array_equal(fields.reshape(12, 64), weights[-1])
    assert step == trace.steps("weights")[-1]
    assert neurons.tolist() == list(range(12))
    with pytest.raises(ValueError, match="layer 0 only"):
        analysis.trace_receptive_fields(trace, layer=1)


def test_selectivity_of_a_trace(trace):
    result = analysis.trace_class_selectivity(trace, layer=0)
    assert result["selectivity"].shape == (12,)
    assert np.all((result["selectivity"] >= 0) & (result["selectivity"] <= 1))
    assert result["n_classes"] == 10
    assert result["activations"].shape == (60, 12)
    fired = result["preferred"] >= 0
    assert np.all(result["preferred"][fired] < 10)


def test_lateral_vs_covariance_of_a_trace(trace):
    result = analysis.trace_lateral_vs_covariance(trace, layer=1)
    assert result["step"] == result["activations_step"] == trace.steps("lateral")[-1]
    expected = analysis.lateral_vs_covariance(
        trace.records("lateral", 1)[-1],
        trace.records("activations", 1)[-1],
        trace.file["layers/1/mask"][()],
    )
    assert result["relative_error"] == pytest.approx(expected["relative_error"])
    assert np.isfinite(result["off_energy"]) and result["off_energy"] >= 0


def test_loss_curves_and_probe_histories_of_a_trace(trace, finished):
    summary = finished[0]
    curves = analysis.loss_curves(trace, layer=0)
    assert set(curves) == {"step", "epoch", "sim", "var", "cov", "lat", "total"}
    n_records = summary["training"]["steps"] // 2  # [record] every = 2
    assert curves["step"].shape == curves["total"].shape == (n_records,)
    smooth = analysis.loss_curves(trace, layer=0, window=5)
    assert smooth["sim"][-1] == pytest.approx(curves["sim"][-5:].mean(), rel=1e-6)

    histories = analysis.probe_histories(trace)
    trained, baseline = histories["trained"], histories["baseline"]
    assert trained["epoch"].tolist() == baseline["epoch"].tolist() == [1, 2]
    assert trained["test_accuracy"][-1] == pytest.approx(
        summary["probe"]["test_accuracy"]
    )
    assert baseline["test_accuracy"][-1] == pytest.approx(
        summary["baseline_probe"]["test_accuracy"]
    )


def test_recorded_neuron_subset_compares_the_right_columns(tmp_path):
    path = tmp_path / "subset.h5"
    net, probe_x = record_by_hand(path, ("lateral", "activations"), neurons=[1, 4, 6])
    selected = [1, 4, 6]
    z = net.transform(probe_x, layers=[0])[0][:, selected]
    expected = analysis.lateral_vs_covariance(
        net.layers[0].lateral[np.ix_(selected, selected)], z
    )
    with trlsim.open_trace(path) as trace:
        result = analysis.trace_lateral_vs_covariance(trace, layer=0)
    assert result["neurons"].tolist() == selected
    np.testing.assert_allclose(result["l_off"], expected["l_off"], rtol=1e-6)
    assert result["relative_error"] == pytest.approx(
        expected["relative_error"], rel=1e-5
    )


def test_missing_field_names_the_record_setting(tmp_path):
    path = tmp_path / "var.h5"
    record_by_hand(path, ("var",))
    with trlsim.open_trace(path) as trace:
        with pytest.raises(analysis.MissingDataError) as caught:
            analysis.trace_receptive_fields(trace)
        message = str(caught.value)
        assert "'weights'" in message and "[record] fields" in message
        with pytest.raises(analysis.MissingDataError, match="not layer 5"):
            analysis.require(trace, "var", layer=5)
        # No summary and no baseline attribute: nothing to report.
        assert analysis.probe_histories(trace) == {"trained": None, "baseline": None}


def test_live_trace_reads_what_was_flushed(tmp_path):
    path = tmp_path / "live.h5"
    net = trlsim.Network([16, 8], seed=0)
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    with Recorder(path, net, fields=("losses",), every=1) as recorder:
        for _ in range(3):
            recorder.after_step(net, None, net.step(x))
        recorder.flush()
        with trlsim.open_trace(path) as trace:
            assert trace.status == "running"
            assert analysis.loss_curves(trace)["step"].tolist() == [1, 2, 3]


def test_docstring_example_runs():
    result = doctest.testmod(analysis, verbose=False, report=False)
    assert result.attempted > 0 and result.failed == 0
