"""Trainer: phases, schedules, history, stop() and SIGINT, divergence."""

import math
import os
import signal

import numba
import numpy as np
import pytest

from trlsim import Network, Stream, Trainer, TrainingDiverged
from trlsim.train import Phase, phases_for

N_IN = 12
ROWS, BATCH, CHUNK = 64, 16, 4  # 4 batches per epoch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def _stream(n_in=N_IN, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, ROWS)
    x = (rng.normal(size=(ROWS, n_in)) + y[:, None]).astype(np.float32)
    return Stream(x, y, batch_size=BATCH, chunk_size=CHUNK, seed=seed)


def _network(sizes=(N_IN, 8, 6), rule="trl", **settings):
    settings.setdefault("learning_rate", 1e-2)
    return Network(list(sizes), rule=rule, chunk_size=CHUNK, seed=0, **settings)


def _params(layer):
    return layer.weights.copy(), layer.bias.copy(), layer.lateral.copy()


def _assert_params_equal(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _assert_params_differ(a, b):
    for x, y in zip(a, b, strict=True):
        assert not np.array_equal(x, y)


# --- phases -------------------------------------------------------------------


def test_phases_concurrent():
    assert phases_for("concurrent", {2, 0, 1}, 3) == [Phase([0, 1, 2], 3)]


def test_phases_greedy_one_layer_at_a_time_in_order():
    assert phases_for("greedy", {2, 0}, 5) == [Phase([0], 5), Phase([2], 5)]


@pytest.mark.parametrize("schedule", ["greedy", "concurrent"])
def test_phases_with_no_learning_layer(schedule):
    assert phases_for(schedule, set(), 4) == [Phase([], 4)]


def test_phases_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'gredy'"):
        phases_for("gredy", {0}, 1)


def test_phases_unknown_schedule_without_learning_layers():
    with pytest.raises(ValueError, match="unknown schedule"):
        phases_for("gredy", set(), 1)


# --- schedules ----------------------------------------------------------------


def test_greedy_trains_only_the_phase_layer():
    net = _network()
    stream = _stream()
    init = [_params(layer) for layer in net.layers]
    trainer = Trainer(net, stream, epochs=2, schedule="greedy", report_every=1)
    end_of_phase = {}

    def progress(p):
        if p.step == 2 * stream.n_batches:  # last step of phase 0
            end_of_phase[0] = [_params(layer) for layer in net.layers]
        assert p.phase == (0 if p.step <= 2 * stream.n_batches else 1)
        assert p.n_phases == 2

    result = trainer.run(progress=progress)
    assert [p.layers for p in result.phases] == [[0], [1]]
    assert result.steps == trainer.total_steps == 2 * 2 * stream.n_batches

    # Phase 0: layer 0 learned, layer 1 kept its initial parameters.
    _assert_params_differ(end_of_phase[0][0], init[0])
    _assert_params_equal(end_of_phase[0][1], init[1])
    # Phase 1: layer 1 learned, layer 0 frozen where phase 0 left it.
    _assert_params_equal(_params(net.layers[0]), end_of_phase[0][0])
    _assert_params_differ(_params(net.layers[1]), init[1])
    assert [layer.optimizer_steps for layer in net.layers] == [8, 8]


def test_concurrent_trains_every_learning_layer_every_step():
    net = _network(rule="trl-s")
    init = [_params(layer) for layer in net.layers]
    trainer = Trainer(net, _stream(), epochs=2, schedule="concurrent")
    result = trainer.run()
    assert [p.layers for p in result.phases] == [[0, 1]]
    for layer, start in zip(net.layers, init):
        _assert_params_differ(_params(layer), start)
        assert layer.optimizer_steps == result.steps == 8


@pytest.mark.parametrize("schedule", ["greedy", "concurrent"])
def test_train_layers_zero_leaves_deeper_layers_at_init(schedule):
    net = _network(sizes=(N_IN, 8, 6, 5), train_layers=[0])
    init = [_params(layer) for layer in net.layers]
    memory = [layer.neurons.copy() for layer in net.layers]
    result = Trainer(net, _stream(), epochs=2, schedule=schedule).run()
    assert [p.layers for p in result.phases] == [[0]]
    assert result.steps == 2 * 4
    _assert_params_differ(_params(net.layers[0]), init[0])
    for index in (1, 2):
        _assert_params_equal(_params(net.layers[index]), init[index])
        assert net.layers[index].optimizer_steps == 0
        # Their memory units still follow their activity.
        assert not np.array_equal(net.layers[index].neurons, memory[index])


def test_empty_learning_set_runs_without_changing_parameters():
    net = _network(train_layers=[])
    init = [_params(layer) for layer in net.layers]
    result = Trainer(net, _stream(), epochs=1, schedule="greedy").run()
    assert result.steps == 4 and not result.interrupted
    for layer, start in zip(net.layers, init):
        _assert_params_equal(_params(layer), start)


@pytest.mark.parametrize(
    "schedule, epochs, expected",
    [("greedy", 3, 2 * 3 * 4), ("concurrent", 3, 3 * 4), ("greedy", 0, 0)],
)
def test_total_steps(schedule, epochs, expected):
    net = _network()
    trainer = Trainer(net, _stream(), epochs=epochs, schedule=schedule)
    assert trainer.total_steps == expected
    result = trainer.run()
    assert result.steps == net.n_steps == expected
    assert result.samples == expected * BATCH
    assert result.epochs_completed == len(result.history) == expected // 4
    assert not result.interrupted


# --- history and progress -----------------------------------------------------


def test_history_has_one_record_per_epoch_with_loss_means():
    net = _network()
    seen = []
    trainer = Trainer(net, _stream(), epochs=2, schedule="greedy", report_every=1)
    result = trainer.run(progress=lambda p: seen.append(p))
    assert len(seen) == result.steps == 16
    assert [p.step for p in seen] == list(range(1, 17))
    assert [p.samples for p in seen] == [BATCH * s for s in range(1, 17)]
    assert all(p.total_steps == 16 for p in seen)

    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert [r["phase"] for r in result.history] == [0, 0, 1, 1]
    assert [r["learning"] for r in result.history] == [[0], [0], [1], [1]]
    for index, record in enumerate(result.history):
        assert len(record["losses"]) == 2
        steps = seen[4 * index : 4 * index + 4]
        assert {p.epoch for p in steps} == {index}
        for layer, means in enumerate(record["losses"]):
            assert set(means) == {"sim", "var", "cov", "lat"}
            for term, value in means.items():
                expected = np.mean([p.losses[layer][term] for p in steps])
                assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)

    summary = result.to_dict()
    assert summary["steps"] == 16 and summary["history"] == result.history
    assert summary["phases"] == [{"layers": [0], "epochs": 2},
                                 {"layers": [1], "epochs": 2}]


def test_progress_every_report_every_steps():
    seen = []
    trainer = Trainer(_network(), _stream(), epochs=2, schedule="concurrent",
                      report_every=3)
    trainer.run(progress=lambda p: seen.append(p.step))
    assert seen == [3, 6]


def test_training_is_reproducible():
    results = []
    for _ in range(2):
        net = _network()
        result = Trainer(net, _stream(), epochs=1, schedule="greedy").run()
        results.append((result.history, [_params(layer) for layer in net.layers]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        _assert_params_equal(a, b)


# --- stopping -----------------------------------------------------------------


def test_stop_from_progress_ends_after_the_current_step():
    net = _network()
    trainer = Trainer(net, _stream(), epochs=2, schedule="greedy", report_every=1)
    steps_at_stop = []

    def progress(p):
        if p.step == 6:
            trainer.stop()
            steps_at_stop.append(net.n_steps)

    result = trainer.run(progress=progress)
    assert result.interrupted
    assert result.steps == net.n_steps == steps_at_stop[0] == 6
    assert result.samples == 6 * BATCH
    assert result.epochs_completed == 1
    # Epoch 1 complete, epoch 2 cut after two of its four steps.
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.to_dict()["interrupted"] is True
    # The network is consistent: every layer took the same number of steps
    # and can keep going.
    assert net.layers[0].optimizer_steps == 6
    assert net.layers[1].optimizer_steps == 0
    for layer in net.layers:
        assert np.isfinite(layer.weights).all()
        assert np.isfinite(layer.neurons["var"]).all()
    losses = net.step(next(iter(_stream().epoch(0)))[0])
    assert all(math.isfinite(d["total"]) for d in losses)


@pytest.fixture
def sigint_sentinel():
    """Install a known SIGINT handler, restore pytest's afterwards."""
    original = signal.getsignal(signal.SIGINT)

    def sentinel(signum, frame):  # pragma: no cover - must never run
        raise AssertionError("the trainer let SIGINT through to the old handler")

    signal.signal(signal.SIGINT, sentinel)
    try:
        yield sentinel
    finally:
        signal.signal(signal.SIGINT, original)


def _wait_until(event):
    # The Python-level handler runs between bytecodes of the main thread.
    for _ in range(10_000_000):
        if event.is_set():
            return
    raise AssertionError("SIGINT handler did not run")


def test_sigint_becomes_a_clean_stop(sigint_sentinel):
    net = _network()
    trainer = Trainer(net, _stream(), epochs=3, schedule="greedy", report_every=1)

    def progress(p):
        if p.step == 5:
            os.kill(os.getpid(), signal.SIGINT)
            _wait_until(trainer._stop)

    result = trainer.run(progress=progress)  # no KeyboardInterrupt
    assert result.interrupted
    assert result.steps == net.n_steps == 5
    assert signal.getsignal(signal.SIGINT) is sigint_sentinel


def test_second_sigint_interrupts_at_once(sigint_sentinel):
    trainer = Trainer(_network(), _stream(), epochs=3, report_every=1)

    def progress(p):
        if p.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            _wait_until(trainer._stop)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000_000):
                pass
            raise AssertionError("a second SIGINT should interrupt")

    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=progress)
    assert signal.getsignal(signal.SIGINT) is sigint_sentinel


def test_sigint_handler_restored_after_a_normal_run(sigint_sentinel):
    Trainer(_network(), _stream(), epochs=1).run()
    assert signal.getsignal(signal.SIGINT) is sigint_sentinel


# --- divergence and input checks ---------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_overflowing_weights_raise_training_diverged(sigint_sentinel):
    net = _network()
    net.layers[0].weights = np.full(net.layers[0].weights.shape, 1e30)
    trainer = Trainer(net, _stream(), epochs=2, schedule="greedy")
    with pytest.warns(RuntimeWarning, match="layer 0 loss is not finite"):
        with pytest.raises(TrainingDiverged, match="step 1 .*Lower learning_rate"):
            trainer.run()
    assert signal.getsignal(signal.SIGINT) is sigint_sentinel


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_huge_learning_rate_raises_training_diverged():
    net = _network(rule="trl-s", learning_rate=1e30)
    trainer = Trainer(net, _stream(), epochs=3, schedule="concurrent")
    with pytest.warns(RuntimeWarning):
        with pytest.raises(TrainingDiverged) as caught:
            trainer.run()
    message = str(caught.value)
    assert "non-finite" in message and "epoch 1" in message
    assert "learning_rate" in message and "c_var" in message
    assert isinstance(caught.value, FloatingPointError)


def test_stream_width_must_match_the_network():
    message = "rows have 11 values but the network takes 12"
    with pytest.raises(ValueError, match=message):
        Trainer(_network(), _stream(n_in=11), epochs=1)
