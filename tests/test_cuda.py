"""CUDA kernels and the CUDA backend against their CPU twins.

Runs on Numba's CUDA simulator, so no GPU is needed. ``NUMBA_ENABLE_CUDASIM``
must be set before :mod:`numba.cuda` is first imported in a process, which is
why it is set at the top of this module, before the other imports: pytest
imports every test module before it runs any test. If something imported
:mod:`numba.cuda` without the simulator earlier in this process, the tests
here cannot use it and are skipped, and one test runs this file again in a
fresh process with the simulator on, so they still run. With
``TRLSIM_CUDA_TESTS=device`` (``benchmarks/gpu_check.sh``) the same tests run
on a real GPU instead, and fail if there is none.

The simulator runs each CUDA thread as a Python thread, so layers are small
(1 to 33 neurons) and the grid is forced small too (blocks of 4 threads, at
most 3 blocks), which also makes every grid-stride loop wrap.

Tolerances: both sides are float32, but they sum in different orders (the CPU
kernels reassociate for SIMD), so values agree to about 1e-6; the checks allow
1e-5 absolute and 1e-4 relative. A frozen layer's parameters must be exactly
unchanged.
"""

import os
import sys

ON_DEVICE = os.environ.get("TRLSIM_CUDA_TESTS") == "device"
SIMULATED = not ON_DEVICE and "numba.cuda" not in sys.modules
if SIMULATED:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import numba.core.config

    # Numba may have read the environment already (any earlier trlsim import).
    numba.core.config.reload_config()

import logging  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numba import cuda  # noqa: E402

import trlsim.backend  # noqa: E402
from trlsim import Network, config  # noqa: E402
from trlsim.backend import BackendError, CUDABackend, get_backend  # noqa: E402
from trlsim.kernels import cpu  # noqa: E402
from trlsim.kernels import cuda as gpu  # noqa: E402
from trlsim.kernels.scalar import ACTIVATION_CODES  # noqa: E402
from trlsim.network import MEMORY_DTYPE  # noqa: E402
from trlsim.optim import kernel_params, moments  # noqa: E402

# Imported before this module, numba.cuda may still be the simulator.
SIMULATED = SIMULATED or cuda.is_available.__module__.endswith("simulator_init")
RUNNABLE = SIMULATED or ON_DEVICE

needs_cuda = pytest.mark.skipif(
    not RUNNABLE,
    reason="numba.cuda was imported without the simulator before this module; "
    "test_suite_in_a_fresh_process runs these tests instead",
)

ACTIVATIONS = list(ACTIVATION_CODES)
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def small_grid(monkeypatch):
    """Blocks of 4 threads, at most 3 of them: grid-stride loops wrap."""
    if ON_DEVICE and not cuda.is_available():
        pytest.fail("TRLSIM_CUDA_TESTS=device, but numba.cuda finds no GPU")
    monkeypatch.setattr(config, "CUDA_BLOCK_SIZE", 4)
    monkeypatch.setattr(gpu, "MAX_BLOCKS", 3)


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _memory(rng, n):
    neurons = np.zeros(n, dtype=MEMORY_DTYPE)
    neurons["mean"] = rng.normal(size=n)
    neurons["var"] = rng.uniform(0.2, 1.5, size=n)  # some gated, some not
    neurons["prev"] = rng.normal(size=n)
    return neurons


def _batch(rng, n_in, n, rows, activation):
    """Activations of a random layer, both layouts, as the kernels make them."""
    x = _normal(rng, rows, n_in)
    weights, bias = _normal(rng, n, n_in) * 0.5, _normal(rng, n) * 0.1
    a_t, z_t = np.empty((n, rows), np.float32), np.empty((n, rows), np.float32)
    cpu.forward(x, weights, bias, ACTIVATION_CODES[activation], a_t, z_t)
    neurons = _memory(rng, n)
    zc_t = np.empty_like(z_t)
    cpu.memory_update(z_t, neurons, 0.9, zc_t)
    return x, weights, bias, a_t, z_t, zc_t, np.ascontiguousarray(zc_t.T), neurons


def _mask(rng, n):
    mask = (rng.random((n, n)) > 0.3).astype(np.float32)
    np.fill_diagonal(mask, 0.0)
    return mask


def _twins(sizes, **settings):
    """The same network on the CPU and on CUDA."""
    return (
        Network(sizes, backend="cpu", **settings),
        Network(sizes, backend="cuda", **settings),
    )


def _assert_same_state(a, b, exact=False):
    for la, lb in zip(a.layers, b.layers, strict=True):
        sa, sb = la.state(), lb.state()
        assert la.optimizer_steps == lb.optimizer_steps
        for name, value in sa.items():
            if value.dtype.names:
                value, other = value.view(np.float32), sb[name].view(np.float32)
            else:
                other = sb[name]
            if exact:
                np.testing.assert_array_equal(other, value, err_msg=name)
            else:
                np.testing.assert_allclose(other, value, err_msg=name, **TOL)


def _assert_same_losses(a, b):
    for la, lb in zip(a, b, strict=True):
        for term in ("sim", "var", "cov", "lat", "total"):
            assert lb[term] == pytest.approx(la[term], rel=1e-4, abs=1e-6), term


# --- kernels, one by one ----------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 7, 33])
def test_forward_kernel(activation, n):
    rng = np.random.default_rng(n)
    x, weights, bias = _normal(rng, 6, 9), _normal(rng, n, 9), _normal(rng, n)
    code = ACTIVATION_CODES[activation]
    a_t, z_t = np.empty((n, 6), np.float32), np.empty((n, 6), np.float32)
    cpu.forward(x, weights, bias, code, a_t, z_t)

    device_a = cuda.device_array((n, 6), np.float32)
    device_z = cuda.device_array((n, 6), np.float32)
    gpu.forward(
        cuda.to_device(x),
        cuda.to_device(weights),
        cuda.to_device(bias),
        code,
        device_a,
        device_z,
    )
    np.testing.assert_allclose(device_a.copy_to_host(), a_t, **TOL)
    np.testing.assert_allclose(device_z.copy_to_host(), z_t, **TOL)


@needs_cuda
@pytest.mark.parametrize("n", [1, 7, 33])
def test_memory_update_kernel(n):
    rng = np.random.default_rng(n)
    z_t = _normal(rng, n, 5)
    neurons = _memory(rng, n)
    device_neurons = cuda.to_device(gpu.memory_columns(neurons.copy()))
    zc_t = np.empty_like(z_t)
    cpu.memory_update(z_t, neurons, 0.9, zc_t)

    device_zc_t = cuda.device_array(z_t.shape, np.float32)
    gpu.memory_update(cuda.to_device(z_t), device_neurons, 0.9, device_zc_t)
    got = device_neurons.copy_to_host()
    for column, name in zip((gpu.MEAN, gpu.VAR, gpu.PREV), MEMORY_DTYPE.names):
        np.testing.assert_allclose(got[:, column], neurons[name], err_msg=name, **TOL)
    np.testing.assert_allclose(device_zc_t.copy_to_host(), zc_t, **TOL)


LOCAL_CASES = [
    # rule, lateral mode, optimizer, activation, neurons, learn
    ("trl", "matrix", "adam", "relu", 33, True),
    ("trl", "matrix", "sgd", "tanh", 7, True),
    ("trl", "direct", "adam", "sigmoid", 7, True),
    ("trl", "direct", "sgd", "gelu", 33, True),
    ("trl-s", "matrix", "adam", "gelu", 1, True),
    ("trl-s", "matrix", "sgd", "relu", 33, True),
    ("trl-s", "direct", "adam", "tanh", 33, True),
    ("trl-s", "direct", "sgd", "sigmoid", 1, True),
    ("trl", "matrix", "adam", "tanh", 7, False),
    ("trl-s", "direct", "sgd", "relu", 33, False),
]


@needs_cuda
@pytest.mark.parametrize(
    "rule, lateral_mode, optimizer, activation, n, learn", LOCAL_CASES
)
def test_local_update_kernel(rule, lateral_mode, optimizer, activation, n, learn):
    rng = np.random.default_rng(n)
    rows, n_in = 8, 10  # chunks of 4 for TRL
    x, weights, bias, a_t, z_t, zc_t, zc, neurons = _batch(
        rng, n_in, n, rows, activation
    )
    lateral, mask = _normal(rng, n, n) * 0.3, _mask(rng, n)
    w_first, w_second = moments(optimizer, weights.shape)
    b_first, b_second = moments(optimizer, bias.shape)
    # Non-zero moments, so the optimizer's use of them is checked too.
    w_first += _normal(rng, *w_first.shape) * 0.01
    w_second += np.abs(_normal(rng, *w_second.shape)) * 0.01
    opt = kernel_params(optimizer, 1e-2, 3, momentum=0.8, weight_decay=0.01)
    codes = (
        ACTIVATION_CODES[activation],
        cpu.RULE_CODES[rule],
        4,
        cpu.LATERAL_CODES[lateral_mode],
        1.0,
        2.5,
        1.0,
        1.0,
        learn,
    )

    host = dict(
        weights=weights.copy(),
        bias=bias.copy(),
        w_first=w_first.copy(),
        w_second=w_second.copy(),
        b_first=b_first.copy(),
        b_second=b_second.copy(),
        losses=np.zeros((n, 4), np.float32),
    )
    cpu.local_update(
        x,
        a_t,
        z_t,
        zc_t,
        zc,
        lateral,
        mask,
        neurons,
        host["weights"],
        host["bias"],
        host["w_first"],
        host["w_second"],
        host["b_first"],
        host["b_second"],
        opt,
        *codes,
        host["losses"],
    )

    dev = {
        key: cuda.to_device(value)
        for key, value in dict(
            weights=weights,
            bias=bias,
            w_first=w_first,
            w_second=w_second,
            b_first=b_first,
            b_second=b_second,
            losses=np.zeros((n, 4), np.float32),
        ).items()
    }
    to = cuda.to_device
    gpu.local_update(
        to(x),
        to(a_t),
        to(z_t),
        to(zc_t),
        to(zc),
        to(lateral),
        to(mask),
        to(gpu.memory_columns(neurons)),
        dev["weights"],
        dev["bias"],
        dev["w_first"],
        dev["w_second"],
        dev["b_first"],
        dev["b_second"],
        to(opt),
        *codes,
        dev["losses"],
    )
    for key, value in host.items():
        got = dev[key].copy_to_host()
        if key == "losses":
            got, value = got[:, :3], value[:, :3]  # the lateral column is not ours
        np.testing.assert_allclose(got, value, err_msg=key, **TOL)
    if not learn:
        np.testing.assert_array_equal(dev["weights"].copy_to_host(), weights)
        np.testing.assert_array_equal(dev["bias"].copy_to_host(), bias)


@needs_cuda
@pytest.mark.parametrize(
    "optimizer, learn, n",
    [("adam", True, 33), ("sgd", True, 7), ("adam", False, 1), ("sgd", False, 33)],
)
def test_lateral_update_kernel(optimizer, learn, n):
    rng = np.random.default_rng(n)
    zc = _normal(rng, 6, n)
    zc -= zc.mean(axis=0)
    zc_t = np.ascontiguousarray(zc.T)
    mask, lateral = _mask(rng, n), _normal(rng, n, n)
    first, second = moments(optimizer, (n, n))
    first += _normal(rng, n, n) * 0.01
    opt = kernel_params(optimizer, 1e-2, 2, momentum=0.9)

    host_lateral, host_first, host_second = lateral.copy(), first.copy(), second.copy()
    losses = np.zeros((n, 4), np.float32)
    cpu.lateral_update(
        zc_t, zc, mask, host_lateral, host_first, host_second, opt, 1.2, learn, losses
    )

    dev_lateral, dev_first, dev_second = map(cuda.to_device, (lateral, first, second))
    dev_losses = cuda.to_device(np.zeros((n, 4), np.float32))
    gpu.lateral_update(
        cuda.to_device(zc_t),
        cuda.to_device(zc),
        cuda.to_device(mask),
        dev_lateral,
        dev_first,
        dev_second,
        cuda.to_device(opt),
        1.2,
        learn,
        dev_losses,
    )
    np.testing.assert_allclose(dev_lateral.copy_to_host(), host_lateral, **TOL)
    np.testing.assert_allclose(dev_first.copy_to_host(), host_first, **TOL)
    np.testing.assert_allclose(dev_second.copy_to_host(), host_second, **TOL)
    np.testing.assert_allclose(dev_losses.copy_to_host(), losses, **TOL)


@needs_cuda
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_optimizer_update_kernel(optimizer):
    rng = np.random.default_rng(3)
    size = 29  # not a multiple of the block, more than the grid
    params = _normal(rng, size)
    first, second = moments(optimizer, (size,))
    dev = [cuda.to_device(a) for a in (params, first, second)]
    for step in range(1, 4):
        grads = _normal(rng, size)
        opt = kernel_params(optimizer, 1e-2, step, momentum=0.8, weight_decay=0.1)
        cpu.optimizer_update(params, grads, first, second, opt)
        gpu.optimizer_update(
            dev[0], cuda.to_device(grads), dev[1], dev[2], cuda.to_device(opt)
        )
    for got, want in zip(dev, (params, first, second)):
        np.testing.assert_allclose(got.copy_to_host(), want, **TOL)


@needs_cuda
def test_transpose_and_loss_sums():
    rng = np.random.default_rng(0)
    source = _normal(rng, 7, 5)
    target = cuda.device_array((5, 7), np.float32)
    gpu.transpose(cuda.to_device(source), target)
    np.testing.assert_array_equal(target.copy_to_host(), source.T)

    losses = _normal(rng, 33, 4)
    sums = cuda.device_array(4, np.float64)
    gpu.sum_losses(cuda.to_device(losses), sums)
    np.testing.assert_allclose(
        sums.copy_to_host(), losses.sum(axis=0, dtype=np.float64), rtol=1e-6
    )


def test_memory_columns_are_a_view():
    neurons = np.zeros(3, dtype=MEMORY_DTYPE)
    columns = gpu.memory_columns(neurons)
    columns[:, gpu.VAR] = 2.0
    np.testing.assert_array_equal(neurons["var"], 2.0)
    with pytest.raises(ValueError, match="MEMORY_DTYPE"):
        gpu.memory_columns(np.zeros(3, dtype=[("mean", "f8")]))


# --- whole networks ---------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize(
    "rule, lateral, optimizer, sizes",
    [
        ("trl", "matrix", "adam", [12, 33, 7]),
        ("trl", "direct", "sgd", [9, 7, 1]),
        ("trl-s", "matrix", "sgd", [9, 7, 1]),
        ("trl-s", "direct", "adam", [12, 33, 7]),
    ],
)
def test_network_steps_match_cpu(rule, lateral, optimizer, sizes):
    cpu_net, cuda_net = _twins(
        sizes,
        rule=rule,
        lateral=lateral,
        optimizer=optimizer,
        seed=4,
        chunk_size=4,
        learning_rate=1e-2,
        cov_sparsity=0.25,
        activation="tanh",
    )
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = _normal(rng, 8, sizes[0])
        _assert_same_losses(cpu_net.step(x), cuda_net.step(x))
    _assert_same_state(cpu_net, cuda_net)


@needs_cuda
def test_frozen_layers_keep_their_parameters():
    cpu_net, cuda_net = _twins([10, 7, 5], train_layers=[0], seed=2, learning_rate=1e-2)
    frozen = cuda_net.layers[1].state()
    frozen = {k: v.copy() for k, v in frozen.items()}
    x = _normal(np.random.default_rng(0), 8, 10)
    _assert_same_losses(cpu_net.step(x), cuda_net.step(x))
    layer = cuda_net.layers[1]
    for name in ("weights", "bias", "lateral"):
        np.testing.assert_array_equal(getattr(layer, name), frozen[name])
    assert layer.optimizer_steps == 0
    assert not np.array_equal(layer.neurons, frozen["neurons"])
    _assert_same_state(cpu_net, cuda_net)


@needs_cuda
def test_transform_matches_cpu():
    cpu_net, cuda_net = _twins([9, 7, 5], seed=3, activation="gelu")
    x = _normal(np.random.default_rng(2), 12, 9)
    # Blocks of 5, 5 and 2 rows: the backend keeps a workspace per size.
    for got, want in zip(
        cuda_net.transform(x, batch_size=5), cpu_net.transform(x, batch_size=5)
    ):
        np.testing.assert_allclose(got, want, **TOL)
    (deep,) = cuda_net.transform(x[:3], layers=[1])
    np.testing.assert_allclose(deep, cpu_net.transform(x[:3], layers=[1])[0], **TOL)


# --- residency: state stays on the device, Python still sees it -------------


@needs_cuda
def test_a_step_copies_back_only_its_loss_sums():
    net = Network([8, 6], backend="cuda", seed=0, learning_rate=1e-2)
    layer = net.layers[0]
    host_weights = layer.__dict__["_weights"]
    before = host_weights.copy()
    net.step(_normal(np.random.default_rng(0), 8, 8))
    # The host copy is stale until Python asks for it...
    np.testing.assert_array_equal(host_weights, before)
    # ...then it is the same array, brought up to date in place.
    assert layer.weights is host_weights
    assert not np.array_equal(host_weights, before)


@needs_cuda
def test_memory_units_read_between_steps_are_current():
    cpu_net, cuda_net = _twins([9, 7, 5], seed=1, learning_rate=1e-2)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = _normal(rng, 8, 9)
        cpu_net.step(x)
        cuda_net.step(x)
        for a, b in zip(cpu_net.layers, cuda_net.layers):
            for field in MEMORY_DTYPE.names:
                np.testing.assert_allclose(b.neurons[field], a.neurons[field], **TOL)
            np.testing.assert_allclose(
                b.moments["weights"][0], a.moments["weights"][0], **TOL
            )


@needs_cuda
def test_python_writes_reach_the_device():
    cpu_net, cuda_net = _twins([9, 7, 5], seed=1, learning_rate=1e-2)
    rng = np.random.default_rng(6)
    x = _normal(rng, 8, 9)
    cpu_net.step(x)
    cuda_net.step(x)
    new_weights = _normal(rng, 7, 9) * 0.2
    for net in (cpu_net, cuda_net):
        layer = net.layers[0]
        layer.weights = new_weights  # through the setter
        layer.bias[:3] = 0.5  # in place
        layer.lateral[0, 1] = 0.25
        layer.neurons["var"][:] = 0.5
        net.layers[1].moments["weights"][0][:] = 0.0
    np.testing.assert_array_equal(cuda_net.layers[0].weights, new_weights)

    x = _normal(rng, 8, 9)
    _assert_same_losses(cpu_net.step(x), cuda_net.step(x))
    _assert_same_state(cpu_net, cuda_net)


@needs_cuda
def test_load_state_reaches_the_device():
    cpu_net, cuda_net = _twins([9, 7, 5], seed=1, learning_rate=1e-2)
    donor = Network([9, 7, 5], backend="cpu", seed=8, learning_rate=1e-2)
    rng = np.random.default_rng(7)
    donor.step(_normal(rng, 8, 9))
    cuda_net.step(_normal(rng, 8, 9))  # now resident, device newer
    for net in (cpu_net, cuda_net):
        for layer, source in zip(net.layers, donor.layers):
            layer.load_state(source.state(), source.optimizer_steps)
    x = _normal(rng, 8, 9)
    _assert_same_losses(cpu_net.step(x), cuda_net.step(x))
    _assert_same_state(cpu_net, cuda_net)


@needs_cuda
def test_moving_between_backends_keeps_the_state():
    cpu_net, moved = _twins([9, 7, 5], seed=1, learning_rate=1e-2)
    rng = np.random.default_rng(8)
    for _ in range(2):
        x = _normal(rng, 8, 9)
        cpu_net.step(x)
        moved.step(x)

    assert moved.to_backend("cpu") is moved
    assert moved.backend.name == "cpu"
    assert all(layer._device is None for layer in moved.layers)
    _assert_same_state(cpu_net, moved)
    x = _normal(rng, 8, 9)
    _assert_same_losses(cpu_net.step(x), moved.step(x))

    moved.to_backend("cuda")
    assert isinstance(moved.backend, CUDABackend)
    for _ in range(2):
        x = _normal(rng, 8, 9)
        _assert_same_losses(cpu_net.step(x), moved.step(x))
    _assert_same_state(cpu_net, moved)


@needs_cuda
def test_online_mode_has_no_cuda_kernels():
    net = Network([6, 4], online=True, backend="cuda", seed=0)
    with pytest.raises(NotImplementedError, match='backend = "cpu"'):
        net.step(np.zeros((3, 6), np.float32))


@needs_cuda
def test_auto_hands_online_mode_to_the_cpu():
    settings = dict(online=True, seed=0, learning_rate=1e-2)
    cpu_net = Network([6, 4], backend="cpu", **settings)
    net = Network([6, 4], backend="cpu", **settings)
    net.backend = CUDABackend(chosen_by_auto=True)
    x = _normal(np.random.default_rng(9), 5, 6)
    net.transform(x)  # the layer is now on the device
    _assert_same_losses(cpu_net.step(x), net.step(x))
    assert net.layers[0]._device is None
    _assert_same_state(cpu_net, net, exact=True)


# --- choosing a backend -------------------------------------------------------


class _NoGPU:
    """Stands in for numba.cuda where CUDA cannot start."""

    def __init__(self, error):
        self.error = error

    def is_available(self):
        return False

    def cuda_error(self):
        return self.error


def _no_import():
    raise ImportError("No module named 'numba.cuda'")


@pytest.mark.parametrize(
    "fake, cause",
    [
        (_no_import, "numba.cuda could not be imported"),
        (
            lambda: _NoGPU("CUDA driver library cannot be found."),
            "no usable CUDA driver",
        ),
        (
            lambda: _NoGPU("cuInit results in CUDA_ERROR_NO_DEVICE (100)"),
            "found no GPU",
        ),
        (lambda: _NoGPU(None), "libNVVM"),
    ],
)
def test_cuda_where_unusable_raises_backend_error(monkeypatch, fake, cause):
    monkeypatch.setattr(trlsim.backend, "_import_cuda", fake)
    with pytest.raises(BackendError, match=cause) as info:
        get_backend("cuda")
    assert 'backend = "cpu"' in str(info.value)
    with pytest.raises(BackendError, match=cause):
        Network([4, 3], backend="cuda")


def test_auto_logs_its_choice_once(monkeypatch, caplog):
    monkeypatch.setattr(trlsim.backend, "_announced_auto", False)
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 0)
    monkeypatch.setattr(trlsim.backend, "cuda_problem", lambda: None)
    with caplog.at_level(logging.INFO, logger="trlsim.backend"):
        first, second = get_backend("auto"), get_backend("auto")
    assert isinstance(first, CUDABackend) and isinstance(second, CUDABackend)
    (record,) = caplog.records
    assert "chose 'cuda'" in record.getMessage()
    assert 'backend = "cuda" to pin it' in record.getMessage()


def test_auto_never_picks_the_simulator(monkeypatch, caplog):
    monkeypatch.setattr(trlsim.backend, "_announced_auto", False)
    monkeypatch.setattr(numba.config, "ENABLE_CUDASIM", 1)
    with caplog.at_level(logging.INFO, logger="trlsim.backend"):
        backend = get_backend("auto")
    assert backend.name == "cpu"
    assert "NUMBA_ENABLE_CUDASIM" in caplog.text
    assert 'set backend = "cpu" to pin it' in caplog.text


def _fresh_python(script, **env):
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_backend_error_in_a_process_without_cuda():
    """Simulator off and a driver path that does not exist: no GPU, anywhere."""
    result = _fresh_python(
        """
        import sys
        import trlsim
        assert "numba.cuda" not in sys.modules, "import trlsim imported numba.cuda"
        try:
            trlsim.Network([4, 3], backend="cuda")
        except trlsim.backend.BackendError as err:
            print("ERROR", err)
        print("AUTO", trlsim.Network([4, 3], backend="auto").backend.name)
        """,
        NUMBA_CUDA_DRIVER="/nonexistent/libcuda.so",
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR backend 'cuda' cannot run here: " in result.stdout
    assert 'Use backend = "cpu"' in result.stdout
    assert "AUTO cpu" in result.stdout


@pytest.mark.skipif(RUNNABLE, reason="the CUDA tests run in this process")
def test_suite_in_a_fresh_process():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parent,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
