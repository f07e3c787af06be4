"""HDF5 recorder: write/read back, durability under SIGKILL, live (SWMR) reading,
refusals, resume equal to an uninterrupted run, and networks rebuilt from
snapshots.

Everything here uses real HDF5 files and real subprocesses; networks are tiny
and numba runs on one thread, so the whole module takes a few seconds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numba
import numpy as np
import pytest

import trlsim
from trlsim import experiment
from trlsim.record import (
    FORMAT,
    FORMAT_VERSION,
    LOSS_COLUMNS,
    Recorder,
    TraceError,
    config_differences,
)
from trlsim.train import Position

# --- shared pieces ---------------------------------------------------------------

SIZES = [16, 8, 4]
ROWS = 8
ALL_FIELDS = ("mean", "var", "prev", "losses", "weights", "bias", "lateral",
              "activations")
STATE_FIELDS = ("mean", "var", "prev", "losses")
WEIGHT_FIELDS = ("weights", "bias", "lateral")

CONFIG = """\
[network]
hidden = [32, 16]
[optimizer]
learning_rate = 1e-3
[data]
dataset = "digits"
batch_size = 32
chunk_size = 8
[training]
epochs = 6
threads = 1
[probe]
epochs = 1
learning_rate = 1e-3
[record]
enabled = true
fields = ["mean", "var", "prev", "losses", "weights", "bias", "lateral", "activations"]
every = 5
snapshot_every = 1
flush_seconds = 0.2
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny layers: one numba thread is fastest, and two cores are busy."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def _network(seed=5):
    return trlsim.Network(SIZES, seed=seed, learning_rate=1e-2, chunk_size=4)


def _batch(step):
    """The input of learning step ``step`` (1-based), the same in every process."""
    return np.random.default_rng(1000 + step).normal(
        size=(ROWS, SIZES[0])).astype(np.float32)


def _probe_x():
    return np.random.default_rng(7).normal(size=(5, SIZES[0])).astype(np.float32)


def _capture(net, losses, probe_x=None):
    """Copies of everything a recorder can sample, right after a step."""
    layers = []
    activations = net.transform(probe_x) if probe_x is not None else None
    for i, layer in enumerate(net.layers):
        arrays = {name: layer.neurons[name].copy() for name in ("mean", "var", "prev")}
        arrays.update(weights=layer.weights.copy(), bias=layer.bias.copy(),
                      lateral=layer.lateral.copy(),
                      losses=np.array([losses[i][k] for k in LOSS_COLUMNS],
                                      np.float32))
        if activations is not None:
            arrays["activations"] = activations[i].copy()
        layers.append(arrays)
    return layers


def _expected(captured, field, layer, idx):
    value = captured[layer][field]
    if field == "losses":
        return value
    if field == "activations":
        return value[:, idx]
    return value[idx]


def _replay(n_steps, seed=5):
    """Step a fresh network like the writer script does; captures per step."""
    net = _network(seed)
    return {net.n_steps: _capture(net, losses)
            for losses in (net.step(_batch(s)) for s in range(1, n_steps + 1))}


def _record_by_hand(path, n_steps=7, epoch_of=lambda step: (step - 1) // 3,
                    **options):
    """Record ``n_steps`` steps of a fresh network; returns per-step copies."""
    net = _network()
    probe_x = _probe_x()
    options.setdefault("fields", ALL_FIELDS)
    if "activations" in options["fields"]:
        options.setdefault("probe_x", probe_x)
    captured = {}
    with Recorder(path, net, **options) as rec:
        for step in range(1, n_steps + 1):
            losses = net.step(_batch(step))
            position = Position(epoch=epoch_of(step), batch=0, step=step)
            rec.after_step(net, position, losses)
            captured[step] = _capture(net, losses, probe_x)
    return captured


def _datasets(path, skip_snapshots=False):
    """Every dataset of a (closed) trace, by name.

    With ``skip_snapshots``, also the run summary, whose timings differ from
    run to run.
    """
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not (
                    skip_snapshots and (name.startswith("snapshots")
                                        or name == "results/summary")):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def _assert_same_datasets(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _snapshot_rows(path, rows):
    """The snapshot datasets of a trace restricted to ``rows``."""
    with h5py.File(path, "r") as f:
        out = {}
        f["snapshots"].visititems(lambda name, obj: out.__setitem__(
            name, obj[()][rows]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _final_snapshot(path):
    with h5py.File(path, "r") as f:
        count = f["snapshots/step"].shape[0]
    return _snapshot_rows(path, [count - 1])


# --- 1. write and read back ------------------------------------------------------


@pytest.mark.parametrize("every, weights_every, activations_every",
                         [(1, 2, 3), (3, None, None)])
def test_records_equal_the_network_at_each_sampled_step(
        tmp_path, every, weights_every, activations_every):
    path = tmp_path / "run.h5"
    n_steps = 7
    captured = _record_by_hand(path, n_steps, every=every,
                               weights_every=weights_every,
                               activations_every=activations_every)
    cadence = {"state": every, "weights": weights_every or every,
               "activations": activations_every or every}
    trace = trlsim.open_trace(path)
    assert trace.status == "finished"
    assert trace.layers == [0, 1] and trace.fields == list(ALL_FIELDS)
    x, y = trace.probe_set()
    np.testing.assert_array_equal(x, _probe_x())
    assert y is None
    for field in ALL_FIELDS:
        kind = trlsim.record.FIELDS[field][0]
        steps = np.arange(cadence[kind], n_steps + 1, cadence[kind])
        np.testing.assert_array_equal(trace.steps(field), steps)
        np.testing.assert_array_equal(trace.epochs(field), (steps - 1) // 3)
        assert trace.steps(field).dtype == np.int64
        for layer in (0, 1):
            records = trace.records(field, layer)
            assert records.dtype == np.float32
            assert records.shape[0] == len(steps), (field, layer)
            for row, step in zip(records, steps):
                expected = _expected(captured[step], field, layer,
                                     np.arange(SIZES[layer + 1]))
                np.testing.assert_array_equal(row, expected, err_msg=f"{field} {step}")
    losses = trace.losses(1)
    np.testing.assert_array_equal(losses["step"], np.arange(every, n_steps + 1, every))
    np.testing.assert_array_equal(losses["cov"], [captured[s][1]["losses"][2]
                                                  for s in losses["step"]])
    trace.close()


@pytest.mark.parametrize("layers, neurons, expected", [
    (None, 4, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}),
    (None, 6, {0: [0, 1, 2, 3, 4, 5], 1: [0, 1, 2, 3]}),  # clipped to the layer
    (None, [1, 3], {0: [1, 3], 1: [1, 3]}),
    ([1], None, {1: [0, 1, 2, 3]}),
    ([0], [0, 5, 7], {0: [0, 5, 7]}),
])
def test_layer_and_neuron_subsets_record_the_right_columns(
        tmp_path, layers, neurons, expected):
    path = tmp_path / "sub.h5"
    captured = _record_by_hand(path, 4, every=1, layers=layers, neurons=neurons)
    with trlsim.open_trace(path) as trace:
        assert trace.layers == sorted(expected)
        for layer in range(2):
            if layer not in expected:
                with pytest.raises(KeyError, match=f"layer {layer}"):
                    trace.records("var", layer)
                continue
            idx = np.array(expected[layer])
            np.testing.assert_array_equal(trace.neurons(layer), idx)
            group = trace.file[f"layers/{layer}"]
            assert group.attrs["n_neurons"] == SIZES[layer + 1]
            assert group.attrs["n_inputs"] == SIZES[layer]
            for field in ALL_FIELDS:
                records = trace.records(field, layer)
                for row, step in zip(records, trace.steps(field), strict=True):
                    want = _expected(captured[step], field, layer, idx)
                    assert row.shape == want.shape, field
                    np.testing.assert_array_equal(row, want, err_msg=field)
            # lateral keeps every column: row j is neuron j's view of the layer
            assert trace.records("lateral", layer).shape[1:] == (
                len(idx), SIZES[layer + 1])


def test_subset_validation(tmp_path):
    net = _network()
    with pytest.raises(ValueError, match="layer 2"):
        Recorder(tmp_path / "a.h5", net, layers=[2])
    with pytest.raises(ValueError, match="0..3"):
        Recorder(tmp_path / "b.h5", net, neurons=[1, 5])  # layer 1 has 4 neurons
    with pytest.raises(ValueError, match="probe_x"):
        Recorder(tmp_path / "c.h5", net, fields=("activations",))
    assert list(tmp_path.iterdir()) == []


def test_metadata_and_dataset_attributes(tmp_path):
    path = tmp_path / "meta.h5"
    net = _network()
    with Recorder(path, net, fields=ALL_FIELDS, probe_x=_probe_x(),
                  probe_y=np.arange(5), every=2,
                  metadata={"dataset": "noise", "extra": {"a": 1}}) as rec:
        for step in range(1, 5):
            rec.after_step(net, None, net.step(_batch(step)))
    with h5py.File(path, "r") as f:
        attrs = f.attrs
        assert attrs["format"] == FORMAT == "trlsim-trace"
        assert attrs["format_version"] == FORMAT_VERSION == 1
        versions = json.loads(attrs["versions"])
        assert set(versions) >= {"trlsim", "numpy", "numba", "h5py", "hdf5"}
        assert versions["trlsim"] == trlsim.__version__
        assert versions["h5py"] == h5py.version.version
        np.testing.assert_array_equal(attrs["layer_sizes"], SIZES)
        assert attrs["rule"] == net.settings.rule == "trl-s"
        assert attrs["seed"] == 5
        assert json.loads(attrs["settings"]) == json.loads(json.dumps(
            vars(net.settings)))
        assert json.loads(attrs["fields"]) == list(ALL_FIELDS)
        assert "created" in attrs
        assert attrs["dataset"] == "noise"
        assert json.loads(attrs["extra"]) == {"a": 1}
        np.testing.assert_array_equal(f["probe_set/y"][()], np.arange(5))

        for cadence in ("state", "weights", "activations"):
            assert f[f"steps/{cadence}"].attrs["every"] == 2
            for name in ("step", "epoch"):
                ds = f[f"steps/{cadence}/{name}"]
                assert ds.attrs["units"] and ds.attrs["description"]
                assert ds.chunks is not None and ds.maxshape == (None,)

        for layer in (0, 1):
            np.testing.assert_array_equal(f[f"layers/{layer}/mask"][()],
                                          net.layers[layer].mask)
            for field in ALL_FIELDS:
                ds = f[f"layers/{layer}/{field}"]
                kind, units, _ = trlsim.record.FIELDS[field]
                assert ds.attrs["units"] == units
                assert ds.attrs["description"]
                assert ds.attrs["step_index"] == f"/steps/{kind}"
                assert ds.attrs["step_index"] in f
                assert ds.chunks is not None, field
                assert ds.maxshape[0] is None and ds.maxshape[1:] == ds.shape[1:]
                assert ds.shape[0] == f[ds.attrs["step_index"] + "/step"].shape[0]
            assert list(f[f"layers/{layer}/losses"].attrs["columns"]) == list(
                LOSS_COLUMNS)

        def chunked(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.chunks is not None and obj.maxshape[0] is None, name
        f["snapshots"].visititems(chunked)
        assert f["results/status"][()] == b"finished"


def test_gzip_traces_hold_the_same_values_and_read_with_plain_h5py(tmp_path):
    net = _network()
    plain_path, gzip_path = tmp_path / "plain.h5", tmp_path / "gzip.h5"
    options = dict(fields=ALL_FIELDS, probe_x=_probe_x(), every=1)
    plain = Recorder(plain_path, net, **options)
    packed = Recorder(gzip_path, net, compression="gzip", **options)
    for step in range(1, 6):
        losses = net.step(_batch(step))
        plain.after_step(net, None, losses)
        packed.after_step(net, None, losses)
    plain.snapshot(net, None)
    packed.snapshot(net, None)
    plain.close()
    packed.close()
    with h5py.File(gzip_path, "r") as f:  # plain h5py, no trlsim involved
        for layer in (0, 1):
            for field in ALL_FIELDS:
                assert f[f"layers/{layer}/{field}"].compression == "gzip"
    with h5py.File(plain_path, "r") as f:
        assert f["layers/0/var"].compression is None
    _assert_same_datasets(_datasets(plain_path), _datasets(gzip_path))
    with pytest.raises(ValueError, match="compression"):
        Recorder(tmp_path / "lzf.h5", net, compression="lzf")


# --- 2. durability under SIGKILL -------------------------------------------------

WRITER = r'''
import os, signal, sys, time
import numba
numba.set_num_threads(1)
import numpy as np
import trlsim
from trlsim.record import Recorder
from trlsim.train import Position

path, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3]
net = trlsim.Network([16, 8, 4], seed=5, learning_rate=1e-2, chunk_size=4)

def batch(step):
    return np.random.default_rng(1000 + step).normal(size=(8, 16)).astype(np.float32)

rec = Recorder(path, net, fields=("mean", "var", "losses", "weights", "lateral"),
               every=1, weights_every=3, flush_seconds=0.03)
print("ready", flush=True)
seen = None
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    step = net.n_steps + 1
    losses = net.step(batch(step))
    position = Position(epoch=(step - 1) // 10, batch=(step - 1) % 10, step=step)
    rec.after_step(net, position, losses)
    if step % 7 == 0:
        rec.snapshot(net, position)
    lengths = (rec.file["steps/state/step"].shape[0],
               rec.file["steps/weights/step"].shape[0],
               rec.file["snapshots/step"].shape[0])
    if lengths != seen and lengths[0] > 0 and (mode != "live" or not seen):
        print("flushed", *lengths, flush=True)
        seen = lengths
    if mode == "selfkill" and lengths[0] >= int(arg) and lengths[2] >= 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "live" and os.path.exists(arg):
        break
    time.sleep(0.002)
rec.close()
print("closed", flush=True)
'''


def _writer(tmp_path, mode, arg="0"):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode, str(arg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    return proc, path


def _flushed(lines):
    return [tuple(map(int, line.split()[1:])) for line in lines
            if line.startswith("flushed")]


def _check_killed_trace(path, printed):
    """A trace killed while writing: opens, holds what was flushed, and every
    row it holds is the right one (no half-written block)."""
    durable = printed[-1]  # the last flush the writer saw complete
    with h5py.File(path, "r", swmr=True) as f:
        lengths = {
            "state": [f["steps/state/step"].shape[0], f["steps/state/epoch"].shape[0]]
            + [f[f"layers/{i}/{n}"].shape[0] for i in (0, 1)
               for n in ("mean", "var", "losses")],
            "weights": [f["steps/weights/step"].shape[0],
                        f["steps/weights/epoch"].shape[0]]
            + [f[f"layers/{i}/{n}"].shape[0] for i in (0, 1)
               for n in ("weights", "lateral")],
            "snapshots": [ds.shape[0] for ds in _snapshot_datasets(f)],
        }
    for (cadence, found), floor in zip(lengths.items(), durable):
        assert min(found) >= floor, (cadence, found, printed[-3:])
        # at most the block being flushed at the kill is missing somewhere
        assert len(set(found)) <= 2, (cadence, found)
        if len(set(found)) == 2:
            assert max(found) > floor, (cadence, found)

    with trlsim.open_trace(path) as trace:
        assert trace.status == "running"
        n_state = len(trace.steps("var"))
        replay = _replay(max(n_state, 3 * len(trace.steps("weights")),
                             int(trace.snapshot_steps().max(initial=0))))
        for field in ("mean", "var", "losses", "weights", "lateral"):
            every = 3 if field in WEIGHT_FIELDS else 1
            steps = trace.steps(field)
            np.testing.assert_array_equal(steps, every * np.arange(1, len(steps) + 1))
            np.testing.assert_array_equal(trace.epochs(field), (steps - 1) // 10)
            for layer in (0, 1):
                records = trace.records(field, layer)
                for row, step in zip(records, steps):  # rows that exist are whole
                    np.testing.assert_array_equal(
                        row, _expected(replay[step], field, layer,
                                       np.arange(SIZES[layer + 1])),
                        err_msg=f"{field} layer {layer} step {step}")
        snap_steps = trace.snapshot_steps()
        np.testing.assert_array_equal(snap_steps, 7 * np.arange(1, len(snap_steps) + 1))
        net = trace.network(snapshot=-1)  # the last snapshot rebuilds a network
        assert net.n_steps == snap_steps[-1]
        np.testing.assert_array_equal(net.layers[1].weights,
                                      replay[net.n_steps][1]["weights"])
    return lengths


def _snapshot_datasets(f):
    found = []
    f["snapshots"].visititems(lambda name, obj: found.append(obj)
                              if isinstance(obj, h5py.Dataset) else None)
    return found


def test_sigkill_right_after_a_flush_keeps_exactly_what_was_flushed(tmp_path):
    proc, path = _writer(tmp_path, "selfkill", 25)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    printed = _flushed(out.splitlines())
    assert printed and printed[-1][0] >= 25
    lengths = _check_killed_trace(path, printed)
    for found, flushed in zip(lengths.values(), printed[-1]):
        assert set(found) == {flushed}
    assert not list(tmp_path.glob("*.partial"))


def test_sigkill_from_outside_while_writing_leaves_a_readable_trace(tmp_path):
    proc, path = _writer(tmp_path, "forever")
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if len(_flushed(lines)) >= 4 and _flushed(lines)[-1][2] >= 1:
            break
    proc.kill()  # SIGKILL, wherever the writer is
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    printed = _flushed(lines + out.splitlines())
    assert printed[-1][0] >= 1
    _check_killed_trace(path, printed)


# --- 3. live reading ---------------------------------------------------------------


def _wait_for_first_flush(proc):
    for line in proc.stdout:
        if line.startswith("flushed"):
            return
    raise AssertionError(f"writer ended early: {proc.communicate()[1]}")


def test_reader_sees_records_grow_while_the_writer_runs(tmp_path):
    stop = tmp_path / "stop"
    proc, path = _writer(tmp_path, "live", stop)
    try:
        _wait_for_first_flush(proc)
        counts = []
        with trlsim.open_trace(path) as trace:
            assert trace.status == "running"
            assert trace.layer_sizes == SIZES
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                trace.refresh()
                steps = trace.steps("var")
                var = trace.records("var", 1)
                weights = trace.records("weights", 0)
                assert var.shape[1:] == (4,) and weights.shape[1:] == (8, 16)
                assert np.isfinite(var).all() and np.isfinite(weights).all()
                assert np.all(np.diff(steps) == 1) and (steps[:1] == 1).all()
                counts.append(len(steps))
                if len(set(counts)) >= 3:
                    break
                time.sleep(0.02)
        assert counts == sorted(counts) and len(set(counts)) >= 3, counts
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "closed" in out
    with trlsim.open_trace(path) as trace:
        assert trace.status == "finished"
        assert len(trace.steps("var")) >= counts[-1]


@pytest.mark.skipif(os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() == "FALSE",
                    reason="the failure comes from HDF5 file locking, which is off")
def test_writer_can_close_while_a_reader_still_has_the_trace_open(tmp_path):
    stop = tmp_path / "stop"
    proc, path = _writer(tmp_path, "live", stop)
    try:
        _wait_for_first_flush(proc)
        trace = trlsim.open_trace(path)
        trace.records("var", 0)
        stop.touch()
        out, err = proc.communicate(timeout=60)
        trace.close()
    finally:
        stop.touch()
        if proc.poll() is None:
            proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-500:]
    with trlsim.open_trace(path) as trace:
        assert trace.status == "finished"


# --- 4. refusals ---------------------------------------------------------------------


def test_existing_trace_is_refused_without_overwrite_and_replaced_with_it(tmp_path):
    path = tmp_path / "run.h5"
    _record_by_hand(path, 2, every=1, fields=("var",))
    before = path.read_bytes()
    net = trlsim.Network([16, 5], seed=1)
    with pytest.raises(TraceError) as info:
        Recorder(path, net)
    message = str(info.value)
    assert str(path) in message and "overwrite" in message
    assert path.read_bytes() == before
    with Recorder(path, net, overwrite=True, every=1) as rec:
        rec.after_step(net, None, net.step(_batch(1)))
    with trlsim.open_trace(path) as trace:
        assert trace.layer_sizes == [16, 5]
        assert trace.fields == ["mean", "var", "prev", "losses"]
        assert trace.steps("var").tolist() == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_missing_folder_is_refused_and_nothing_is_created(tmp_path):
    path = tmp_path / "nope" / "run.h5"
    with pytest.raises(TraceError, match="does not exist") as info:
        Recorder(path, _network())
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_parent_that_is_a_regular_file_is_refused(tmp_path):
    parent = tmp_path / "afile"
    parent.write_text("not a folder")
    with pytest.raises(TraceError) as info:
        Recorder(parent / "run.h5", _network())
    assert str(parent / "run.h5") in str(info.value)
    assert parent.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: chmod 0o500 does not stop root from "
                           "writing (the parent-is-a-file case covers the refusal)")
def test_unwritable_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(TraceError, match="not writable"):
            Recorder(folder / "run.h5", _network())
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_create_failing_inside_hdf5_raises_trace_error(tmp_path):
    # /proc passes the folder checks (for root at least) but refuses new files,
    # so the failure comes from HDF5 itself.
    with pytest.raises(TraceError, match="cannot write trace"):
        Recorder(Path("/proc") / f"trlsim-{os.getpid()}.h5", _network())
    assert not Path(f"/proc/trlsim-{os.getpid()}.h5.partial").exists()


def test_failed_layout_leaves_no_partial_file(tmp_path):
    path = tmp_path / "run.h5"
    with pytest.raises(Exception):
        Recorder(path, _network(), metadata={"note": object()})
    assert list(tmp_path.iterdir()) == []


# --- 5. resume equals an uninterrupted run -------------------------------------------


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "small.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def uninterrupted(config_file, tmp_path_factory):
    """Run A: the config trained without a break."""
    out = tmp_path_factory.mktemp("A")
    summary = experiment.run(trlsim.load_config(config_file), out=out, overwrite=True)
    assert summary["status"] == "finished"
    return out, summary


def _interrupt_at_half(progress):
    if progress.step >= progress.total_steps // 2 and not _interrupt_at_half.sent:
        _interrupt_at_half.sent = True
        os.kill(os.getpid(), signal.SIGINT)


def _assert_resumed_equals(folder, reference, interruption_row=None):
    trace_a, trace_b = reference / "trace.h5", folder / "trace.h5"
    final_a, final_b = _final_snapshot(trace_a), _final_snapshot(trace_b)
    assert any(name.endswith("optimizer_steps") for name in final_a)
    _assert_same_datasets(final_a, final_b)
    _assert_same_datasets(_datasets(trace_a, skip_snapshots=True),
                          _datasets(trace_b, skip_snapshots=True))
    # B's snapshots are A's plus the one taken at the interruption
    with h5py.File(trace_b, "r") as f:
        count = f["snapshots/step"].shape[0]
    rows = [i for i in range(count) if i != interruption_row]
    _assert_same_datasets(_snapshot_rows(trace_a, slice(None)),
                          _snapshot_rows(trace_b, rows))


def test_resume_after_sigint_equals_the_uninterrupted_run(
        config_file, uninterrupted, tmp_path):
    reference, summary_a = uninterrupted
    config = trlsim.load_config(config_file)
    out = tmp_path / "B"
    _interrupt_at_half.sent = False
    stopped = experiment.run(config, out=out, on_train=_interrupt_at_half)
    assert _interrupt_at_half.sent
    assert stopped["status"] == "interrupted"
    assert stopped["training"]["interrupted"] is True
    assert "--resume" in stopped["note"]
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    position = stopped["training"]["position"]
    total = summary_a["training"]["steps"]
    assert total // 2 <= position["step"] < total
    assert 0 < position["batch"]  # mid-epoch
    with trlsim.open_trace(out / "trace.h5") as trace:
        assert trace.status == "interrupted"
        assert trace.snapshot_steps()[-1] == position["step"]
        last = trace.snapshot(-1)
        assert (last["epoch"], last["batch"], last["step"]) == (
            position["epoch"], position["batch"], position["step"])
        assert trace.steps("var")[-1] <= position["step"]
        interruption_row = trace.n_snapshots - 1

    resumed = experiment.run(config, out=out, resume=out / "trace.h5")
    assert resumed["status"] == "finished"
    assert resumed["resumed_from"]["step"] == position["step"]
    assert resumed["training"]["steps"] == total - position["step"]
    assert resumed["probe"]["test_accuracy"] == summary_a["probe"]["test_accuracy"]
    assert "baseline_probe" in resumed
    with trlsim.open_trace(out / "trace.h5") as b, \
            trlsim.open_trace(reference / "trace.h5") as a:
        assert b.status == "finished"
        assert b.n_snapshots == a.n_snapshots + 1
    _assert_resumed_equals(out, reference, interruption_row)


def _cli(*args):
    return [sys.executable, "-m", "trlsim.cli", "run", *map(str, args)]


def test_cli_resume_after_sigint_equals_the_uninterrupted_run(
        config_file, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "B2"
    proc = subprocess.Popen(_cli(config_file, "--out", out),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        # "train" is the progress bar's label, drawn at the first progress
        # report: training (and its Ctrl-C handler) is running by then.
        if line.strip() == "train":
            proc.send_signal(signal.SIGINT)
            break
    out_text, err = proc.communicate(timeout=120)
    assert any(line.startswith("trlsim: training:") for line in seen), seen
    assert proc.returncode == 130, "".join(seen) + err
    assert "interrupted" in out_text and "--resume" in out_text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    with trlsim.open_trace(out / "trace.h5") as trace:
        assert trace.status == "interrupted"
        assert trace.snapshot_steps()[-1] == summary["training"]["position"]["step"]
        interruption_row = trace.n_snapshots - 1
        interrupted_at_epoch_end = summary["training"]["position"]["batch"] == 0

    done = subprocess.run(_cli(config_file, "--out", out, "--resume",
                               out / "trace.h5"),
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "finished" in done.stdout
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    # stopped at an epoch's end, the stop snapshot is also an epoch snapshot
    _assert_resumed_equals(out, reference,
                           None if interrupted_at_epoch_end else interruption_row)


# --- 6. resume refusals ------------------------------------------------------------


def _copy_trace(reference, tmp_path):
    copy = tmp_path / "copy.h5"
    shutil.copy2(reference / "trace.h5", copy)
    return copy


def _fingerprint(path):
    stat = path.stat()
    return path.read_bytes(), stat.st_mtime_ns, stat.st_size


def test_resume_with_changed_settings_is_refused(config_file, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    trace = _copy_trace(reference, tmp_path)
    before = _fingerprint(trace)
    config = trlsim.load_config(config_file).replace(
        **{"training.seed": 7, "rule.c_var": 3.0})
    out = tmp_path / "out"
    with pytest.raises(TraceError) as info:
        experiment.run(config, out=out, resume=trace)
    message = str(info.value)
    assert str(trace) in message
    assert "[training] seed: 0 in the trace, 7 now" in message
    assert "[rule] c_var: 2.5 in the trace, 3.0 now" in message
    assert _fingerprint(trace) == before
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.h5"]


def test_resume_ignores_threads_and_output(config_file):
    config = trlsim.load_config(config_file)
    recorded = config.to_dict()
    current = config.replace(**{"training.threads": 2, "output.dir": "elsewhere",
                                "record.file": "other.h5"}).to_dict()
    assert config_differences(recorded, current,
                              ("output", "record.file", "training.threads")) == []
    assert config_differences(recorded, current) != []
    changed = config.replace(**{"training.epochs": 9}).to_dict()
    assert config_differences(recorded, changed) == [
        "[training] epochs: 6 in the trace, 9 now"]


def test_resume_of_a_newer_format_is_refused(config_file, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    trace = _copy_trace(reference, tmp_path)
    with h5py.File(trace, "r+") as f:
        f.attrs["format_version"] = 99
    before = _fingerprint(trace)
    out = tmp_path / "out"
    with pytest.raises(TraceError, match="version 99") as info:
        experiment.run(trlsim.load_config(config_file), out=out, resume=trace)
    assert "upgrade" in str(info.value)
    assert _fingerprint(trace) == before
    assert not out.exists()
    with pytest.raises(TraceError, match="version 99"):
        trlsim.open_trace(trace)
    assert _fingerprint(trace) == before


def test_resume_of_something_that_is_not_a_trace_is_refused(config_file, tmp_path):
    config = trlsim.load_config(config_file)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TraceError, match="not a trlsim trace"):
        experiment.run(config, out=tmp_path / "out", resume=other)
    with pytest.raises(TraceError, match="does not exist"):
        experiment.run(config, out=tmp_path / "out", resume=tmp_path / "none.h5")
    assert not (tmp_path / "out").exists()


# --- 7. snapshots rebuild a network --------------------------------------------------


def _state(net):
    return [({k: v.copy() for k, v in layer.state().items()}, layer.optimizer_steps)
            for layer in net.layers]


def _assert_same_state(a, b):
    for (arrays_a, steps_a), (arrays_b, steps_b) in zip(a, b, strict=True):
        assert steps_a == steps_b
        assert sorted(arrays_a) == sorted(arrays_b)
        for name in arrays_a:
            assert arrays_a[name].dtype == arrays_b[name].dtype, name
            np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)


def test_snapshots_rebuild_the_network_and_it_steps_on(tmp_path):
    path = tmp_path / "snap.h5"
    net = trlsim.Network(SIZES, seed=5, learning_rate=1e-2, chunk_size=4,
                         optimizer="adam", cov_sparsity=0.3)
    snapshot_at = (2, 5, 8)
    states = {}
    with Recorder(path, net, fields=("var",), every=1) as rec:
        for step in range(1, 9):
            rec.after_step(net, None, net.step(_batch(step)))
            if step in snapshot_at:
                rec.snapshot(net, Position(epoch=step // 4, batch=step % 4, step=step))
                rec.snapshot(net, None)  # a second call at the same step is a no-op
                states[step] = _state(net)
    with trlsim.open_trace(path) as trace:
        assert trace.snapshot_steps().tolist() == list(snapshot_at)
        for k, step in enumerate(snapshot_at):
            rebuilt = trace.network(snapshot=k)
            assert rebuilt.n_steps == step
            assert rebuilt.layer_sizes == SIZES
            assert rebuilt.settings == net.settings
            _assert_same_state(_state(rebuilt), states[step])
            info = trace.snapshot(k)
            assert (info["epoch"], info["batch"]) == (step // 4, step % 4)
            # stepping on from snapshot k reaches snapshot k + 1, bit for bit
            if k + 1 < len(snapshot_at):
                for later in range(step + 1, snapshot_at[k + 1] + 1):
                    rebuilt.step(_batch(later))
                _assert_same_state(_state(rebuilt), states[snapshot_at[k + 1]])
        last = trace.network()  # default: the last snapshot
        _assert_same_state(_state(last), states[8])
        original, rebuilt_losses = net.step(_batch(9)), last.step(_batch(9))
        assert rebuilt_losses == original
        _assert_same_state(_state(last), _state(net))
        with pytest.raises(TraceError, match="3 snapshots"):
            trace.network(snapshot=3)


def test_trace_of_a_run_rebuilds_its_final_network(uninterrupted):
    reference, summary = uninterrupted
    with trlsim.open_trace(reference / "trace.h5") as trace:
        assert trace.status == "finished"
        assert trace.summary["status"] == "finished"
        assert trace.attrs["dataset"] == "digits"
        per_epoch = trace.attrs["batches_per_epoch"]
        assert trace.snapshot_steps().tolist() == [
            per_epoch * e for e in range(1, 7)]
        assert trace.steps("weights").tolist() == trace.snapshot_steps().tolist()
        for k in (0, -1):
            net = trace.network(snapshot=k)
            info = trace.snapshot(k)
            assert net.n_steps == info["n_steps"]
            for layer, (arrays, steps) in zip(net.layers, info["layers"]):
                assert layer.optimizer_steps == steps
                for name, value in arrays.items():
                    np.testing.assert_array_equal(layer.state()[name], value)
            losses = net.step(trace.probe_set()[0][:32])
            assert all(np.isfinite(d["total"]) for d in losses)
