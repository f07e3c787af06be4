"""Recording a run into one HDF5 trace while the network learns.

A :class:`Recorder` watches a :class:`trlsim.train.Trainer` (it is one of its
``observers``) or is called by hand after each ``Network.step``. It keeps what
it samples in memory and appends it to the file in blocks, flushing at a fixed
cadence in HDF5's single-writer/multiple-reader (SWMR) mode, so that

* another process can open the trace while the run writes it
  (``h5py.File(path, "r", swmr=True)``, or :func:`trlsim.open_trace`);
* a run killed at any moment leaves a file that opens and holds everything up
  to the last flush.

It also stores full snapshots of the network (weights, biases, lateral
matrices, memory units, optimizer moments and counters, stream position), from
which a run resumes bit for bit (:func:`prepare_resume`) and from which
:func:`trlsim.open_trace` rebuilds a network. Nothing is pickled: every value
is a plain HDF5 dataset or attribute. ``docs/trace_format.md`` describes the
layout.

Examples
--------
>>> import numpy as np, tempfile, os, trlsim
>>> from trlsim.record import Recorder
>>> net = trlsim.Network([16, 8], seed=0)
>>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
>>> x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
>>> with Recorder(path, net, fields=("var", "losses"), every=1) as rec:
...     for _ in range(3):
...         rec.after_step(net, None, net.step(x))
>>> trace = trlsim.open_trace(path)
>>> trace.records("var", layer=0).shape, trace.steps("var").tolist()
((3, 8), [1, 2, 3])
"""

import datetime
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numba
import numpy as np

from . import __version__
from .kernels.cpu import LOSS_TERMS

logger = logging.getLogger(__name__)

FORMAT = "trlsim-trace"
FORMAT_VERSION = 1

#: Everything a recorder can sample, and how each is described in the file.
FIELDS = {
    "mean": ("state", "activation", "running mean of the neuron's activation z"),
    "var": ("state", "activation^2", "running variance of the neuron's activation"),
    "prev": ("state", "activation", "the neuron's previous activation (last row)"),
    "losses": ("state", "loss", "unweighted loss terms of the layer, summed over "
               "neurons: sim, var, cov, lat, and their weighted total"),
    "weights": ("weights", "weight", "feed-forward weights W, rows = neurons"),
    "bias": ("weights", "weight", "bias b of each neuron"),
    "lateral": ("weights", "weight", "lateral matrix L, rows = neurons"),
    "activations": ("activations", "activation",
                    "activations z on the fixed probe set, (sample, neuron)"),
}
MEMORY_FIELDS = ("mean", "var", "prev")
DEFAULT_FIELDS = ("mean", "var", "prev", "losses")
LOSS_COLUMNS = (*LOSS_TERMS, "total")
CADENCES = ("state", "weights", "activations")
STATUS_DTYPE = "S16"
# SWMR needs the HDF5 1.10 file format; capping it there keeps traces readable
# by every HDF5 tool from 1.10 on.
LIBVER = ("v110", "v110")


class TraceError(Exception):
    """A trace cannot be written, read or resumed as asked."""


def _versions():
    return {"trlsim": __version__, "numpy": np.__version__,
            "numba": numba.__version__, "h5py": h5py.version.version,
            "hdf5": h5py.version.hdf5_version}


class Recorder:
    """Streams samples of a network's state to an HDF5 trace.

    Parameters
    ----------
    path : str or Path
        The trace file. An existing file is refused unless ``overwrite``.
    network : trlsim.Network
        The network to watch; its layout goes into the file.
    fields : sequence of str
        What to record, from :data:`FIELDS`.
    every : int
        Steps between samples of memory units and losses.
    weights_every, activations_every : int, optional
        Steps between samples of weights/bias/lateral and of activations on
        the probe set (default: ``every``). Weights are large: sample them far
        less often.
    layers : sequence of int, optional
        Layers to record (default all).
    neurons : int or sequence of int, optional
        Neurons to record in each layer: the first ``n``, or these indices
        (default all).
    probe_x, probe_y : arrays, optional
        The fixed inputs (and labels) whose activations ``"activations"``
        records; stored once in the file.
    compression : {None, "gzip"}
        Compression of the recorded datasets (gzip is readable by any HDF5
        tool).
    flush_seconds : float
        Longest time between writes to disk; what a crash can lose.
    snapshot_every : int, optional
        Epochs between full snapshots (a snapshot is always taken at the end
        of a run and when it is interrupted).
    metadata : dict, optional
        Extra root attributes: ``config`` (TOML text), ``config_json``,
        ``seed``, ``dataset``, ``image_shape``, ...
    overwrite : bool
        Replace an existing file.
    resume : bool
        Append to an existing trace prepared by :func:`prepare_resume`.
    """

    def __init__(self, path, network, fields=DEFAULT_FIELDS, every=10,
                 weights_every=None, activations_every=None, layers=None,
                 neurons=None, probe_x=None, probe_y=None, compression=None,
                 flush_seconds=5.0, snapshot_every=None, metadata=None,
                 overwrite=False, resume=False):
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise ValueError(
                f"cannot record {unknown}; valid fields: {', '.join(FIELDS)}"
            )
        if "activations" in fields and probe_x is None:
            raise ValueError("recording 'activations' needs probe_x, the inputs")
        if compression not in (None, "gzip"):
            raise ValueError(f"compression must be None or 'gzip', got {compression!r}")
        self.path = Path(path)
        self.network = network
        self.fields = tuple(fields)
        self.cadence = {"state": every, "weights": weights_every or every,
                        "activations": activations_every or every}
        for name, value in self.cadence.items():
            if int(value) < 1:
                raise ValueError(f"{name} cadence must be >= 1 step, got {value}")
        n_layers = len(network.layers)
        self.layers = list(range(n_layers)) if layers is None else list(layers)
        for index in self.layers:
            if not 0 <= index < n_layers:
                raise ValueError(f"cannot record layer {index}: the network has "
                                 f"layers 0..{n_layers - 1}")
        self.neurons = {
            i: _neuron_index(neurons, network.layers[i]) for i in self.layers
        }
        self.probe_x = None if probe_x is None else np.ascontiguousarray(probe_x,
                                                                         np.float32)
        self.probe_y = None if probe_y is None else np.asarray(probe_y, np.int64)
        self.compression = compression
        self.flush_seconds = flush_seconds
        self.snapshot_every = snapshot_every
        self.metadata = dict(metadata or {})
        self._buffers = {c: {"step": [], "epoch": [], "data": {}} for c in CADENCES}
        self._buffered_bytes = 0
        self._last_flush = time.monotonic()
        self._last_snapshot_step = None
        # Step of the latest sample per cadence: online steps advance n_steps
        # by a whole block, so "due" means a multiple of the cadence was
        # crossed, not hit exactly.
        self._last_sampled = dict.fromkeys(CADENCES, network.n_steps)
        self.file = None
        if resume:
            self._open_existing()
        else:
            self._create(overwrite)

    # -- life cycle -------------------------------------------------------------

    def _create(self, overwrite):
        if self.path.exists() and not overwrite:
            raise TraceError(
                f"{self.path} already exists; pass overwrite=True (or --overwrite) "
                f"to replace it, or record to another file"
            )
        folder = self.path.parent
        if not folder.is_dir():
            state = "is not a folder" if folder.exists() else "does not exist"
            raise TraceError(f"cannot write trace {self.path}: {folder} {state}")
        if not os.access(folder, os.W_OK):
            raise TraceError(f"cannot write trace {self.path}: folder {folder} "
                             f"is not writable")
        # Build the file aside and move it in place whole, so a failure leaves
        # nothing behind and never a half-made trace under the real name.
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            with h5py.File(partial, "w", libver=LIBVER) as f:
                self._layout(f)
            os.replace(partial, self.path)
        except OSError as err:
            partial.unlink(missing_ok=True)
            raise TraceError(f"cannot write trace {self.path}: {err}") from err
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self._open_existing()

    def _open_existing(self):
        try:
            self.file = h5py.File(self.path, "r+", libver=LIBVER)
            self.file.swmr_mode = True
        except OSError as err:
            raise TraceError(
                f"cannot open trace {self.path} for writing: {err}"
            ) from err

    def _layout(self, f):
        """Create every group, dataset and attribute up front (SWMR needs it)."""
        net = self.network
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds")
        f.attrs["versions"] = json.dumps(_versions())
        f.attrs["layer_sizes"] = np.array(net.layer_sizes, dtype=np.int64)
        f.attrs["rule"] = net.settings.rule
        f.attrs["settings"] = json.dumps(vars(net.settings))
        f.attrs["network_config"] = json.dumps(net.config.to_dict())
        f.attrs["seed"] = net.seed
        f.attrs["fields"] = json.dumps(list(self.fields))
        for key, value in self.metadata.items():
            if value is not None:
                f.attrs[key] = (json.dumps(value) if isinstance(value, (dict, list))
                                else value)

        for cadence in CADENCES:
            group = f.create_group(f"steps/{cadence}")
            group.attrs["every"] = self.cadence[cadence]
            for name, unit, text in (("step", "step", "learning steps taken when "
                                      "the sample was made"),
                                     ("epoch", "epoch", "epoch (from 0) of the step")):
                ds = group.create_dataset(name, (0,), maxshape=(None,), dtype="i8",
                                          chunks=(1024,))
                ds.attrs["units"], ds.attrs["description"] = unit, text

        if self.probe_x is not None:
            f.create_dataset("probe_set/x", data=self.probe_x)
            if self.probe_y is not None:
                f.create_dataset("probe_set/y", data=self.probe_y)

        for index in self.layers:
            layer = net.layers[index]
            group = f.create_group(f"layers/{index}")
            group.attrs["n_inputs"] = layer.n_inputs
            group.attrs["n_neurons"] = layer.n_neurons
            group.attrs["neurons"] = self.neurons[index]
            group.create_dataset("mask", data=layer.mask)
            for name in self.fields:
                cadence, unit, text = FIELDS[name]
                shape = self._sample_shape(name, layer, index)
                rows = max(1, min(1024, (1 << 20) // max(1, 4 * int(np.prod(shape)))))
                ds = group.create_dataset(
                    name, (0, *shape), maxshape=(None, *shape), dtype="f4",
                    chunks=(rows, *shape), compression=self.compression)
                ds.attrs["units"] = unit
                ds.attrs["description"] = text
                ds.attrs["step_index"] = f"/steps/{cadence}"
                if name == "losses":
                    ds.attrs["columns"] = list(LOSS_COLUMNS)

        snaps = f.create_group("snapshots")
        for name in ("step", "epoch", "batch"):
            snaps.create_dataset(name, (0,), maxshape=(None,), dtype="i8", chunks=(64,))
        snaps.attrs["description"] = (
            "full network state after `step` learning steps; the run goes on "
            "with batch `batch` of epoch `epoch`")
        for layer in net.layers:
            group = snaps.create_group(f"layers/{layer.index}")
            group.create_dataset("optimizer_steps", (0,), maxshape=(None,),
                                 dtype="i8", chunks=(64,))
            for name, array in layer.state().items():
                if name == "mask" or 0 in array.shape:
                    continue
                group.create_dataset(name, (0, *array.shape),
                                     maxshape=(None, *array.shape), dtype=array.dtype,
                                     chunks=(1, *array.shape))
        # Status and summary are datasets, not attributes: they change at the
        # end of the run, and SWMR allows writing datasets, not attributes.
        results = f.create_group("results")
        results.create_dataset("status", data=np.bytes_("running"), dtype=STATUS_DTYPE)
        results.create_dataset("summary", (0,), maxshape=(None,), dtype="u1",
                               chunks=(1 << 14,))
        results["summary"].attrs["description"] = "run summary, UTF-8 JSON text"

    def _sample_shape(self, name, layer, index):
        n = len(self.neurons[index])
        return {
            "losses": (len(LOSS_COLUMNS),),
            "weights": (n, layer.n_inputs),
            "lateral": (n, layer.n_neurons),
            "activations": (0 if self.probe_x is None else len(self.probe_x), n),
        }.get(name, (n,))

    def close(self, status="finished", results=None):
        """Write what is buffered, end SWMR mode and store the final status.

        ``results`` (a JSON-able dict, e.g. the run summary) is stored in the
        ``/results`` group's ``summary`` attribute.
        """
        if self.file is None:
            return
        try:
            self.flush()
            write_results(self.file, status, results)
            self.file.flush()
        finally:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close("finished" if kind is None else "failed")
        return False

    # -- observing --------------------------------------------------------------

    def after_step(self, network, position, losses):
        """Sample what is due after learning step ``network.n_steps``."""
        step = network.n_steps
        epoch = position.epoch if position is not None else 0
        if self._due("state", step):
            self._sample_state(network, step, epoch, losses)
        if self._due("weights", step):
            self._sample_weights(network, step, epoch)
        if self._due("activations", step) and "activations" in self.fields:
            self._sample_activations(network, step, epoch)
        if (self._buffered_bytes > 64 << 20
                or time.monotonic() - self._last_flush > self.flush_seconds):
            self.flush()

    def _due(self, cadence, step):
        every = self.cadence[cadence]
        if step // every > self._last_sampled[cadence] // every:
            self._last_sampled[cadence] = step
            return True
        return False

    def after_epoch(self, network, position):
        if self.snapshot_every and position.epoch % self.snapshot_every == 0:
            self.snapshot(network, position)

    def at_end(self, network, position, interrupted):
        self.snapshot(network, position)
        self.flush()

    def _append(self, cadence, step, epoch, arrays):
        buffer = self._buffers[cadence]
        if not arrays:
            return
        buffer["step"].append(step)
        buffer["epoch"].append(epoch)
        for key, value in arrays.items():
            buffer["data"].setdefault(key, []).append(value)
            self._buffered_bytes += value.nbytes

    def _sample_state(self, network, step, epoch, losses):
        arrays = {}
        for index in self.layers:
            layer, idx = network.layers[index], self.neurons[index]
            for name in MEMORY_FIELDS:
                if name in self.fields:
                    arrays[(index, name)] = layer.neurons[name][idx].astype(np.float32)
            if "losses" in self.fields:
                arrays[(index, "losses")] = np.array(
                    [losses[index][k] for k in LOSS_COLUMNS], np.float32)
        self._append("state", step, epoch, arrays)

    def _sample_weights(self, network, step, epoch):
        arrays = {}
        for index in self.layers:
            layer, idx = network.layers[index], self.neurons[index]
            for name in ("weights", "bias", "lateral"):
                if name in self.fields:
                    arrays[(index, name)] = getattr(layer, name)[idx].copy()
        self._append("weights", step, epoch, arrays)

    def _sample_activations(self, network, step, epoch):
        outputs = network.transform(self.probe_x, layers=self.layers)
        arrays = {(index, "activations"): z[:, self.neurons[index]]
                  for index, z in zip(self.layers, outputs)}
        self._append("activations", step, epoch, arrays)

    # -- writing ----------------------------------------------------------------

    def flush(self):
        """Append everything buffered to the file and flush it to disk."""
        if self.file is None:
            return
        try:
            for cadence, buffer in self._buffers.items():
                if not buffer["step"]:
                    continue
                # Fields before their step index: a live reader never sees a
                # step whose sample is not there yet.
                for (index, name), values in buffer["data"].items():
                    _extend(self.file[f"layers/{index}/{name}"], np.stack(values))
                group = self.file[f"steps/{cadence}"]
                _extend(group["step"], np.array(buffer["step"], np.int64))
                _extend(group["epoch"], np.array(buffer["epoch"], np.int64))
                buffer["step"].clear()
                buffer["epoch"].clear()
                buffer["data"].clear()
            self.file.flush()
        except OSError as err:
            raise TraceError(
                f"writing trace {self.path} failed ({err}); the file holds the "
                f"records up to the previous flush"
            ) from err
        self._buffered_bytes = 0
        self._last_flush = time.monotonic()

    def snapshot(self, network, position):
        """Store the network's full state at ``position`` (once per step)."""
        if self._last_snapshot_step == network.n_steps:
            return
        self.flush()
        snaps = self.file["snapshots"]
        epoch, batch = (position.epoch, position.batch) if position else (0, 0)
        for name, value in (("step", network.n_steps), ("epoch", epoch),
                            ("batch", batch)):
            _extend(snaps[name], np.array([value], np.int64))
        for layer in network.layers:
            group = snaps[f"layers/{layer.index}"]
            _extend(group["optimizer_steps"], np.array([layer.optimizer_steps]))
            for name, array in layer.state().items():
                if name in group:
                    _extend(group[name], array[None])
        self.file.flush()
        self._last_snapshot_step = network.n_steps


def write_results(f, status, summary=None):
    """Store the run's status (and summary) in ``/results`` of an open trace."""
    f["results/status"][()] = np.bytes_(status)
    if summary is not None:
        text = np.frombuffer(json.dumps(summary).encode(), dtype=np.uint8)
        f["results/summary"].resize(text.size, axis=0)
        f["results/summary"][:] = text


def read_results(f):
    """``(status, summary or None)`` of an open trace."""
    status = f["results/status"][()].decode()
    raw = f["results/summary"][()]
    return status, (json.loads(raw.tobytes().decode()) if raw.size else None)


def _extend(dataset, block):
    start = dataset.shape[0]
    dataset.resize(start + block.shape[0], axis=0)
    dataset[start:] = block


def _neuron_index(neurons, layer):
    if neurons is None:
        return np.arange(layer.n_neurons)
    if isinstance(neurons, (int, np.integer)):
        return np.arange(min(int(neurons), layer.n_neurons))
    index = np.asarray(neurons, dtype=np.int64)
    if index.ndim != 1 or index.size == 0 or index.min() < 0 or (
            index.max() >= layer.n_neurons):
        raise ValueError(
            f"neurons to record in layer {layer.index} must be indices in "
            f"0..{layer.n_neurons - 1}, got {neurons!r}"
        )
    return index


# -- resuming ---------------------------------------------------------------------


def read_snapshot(path_or_file, which=-1):
    """The layer states and position of one snapshot of a trace.

    Returns
    -------
    dict
        ``step`` (learning steps taken, also as ``n_steps``), ``epoch``,
        ``batch`` (where the run goes on) and ``layers``: a list of
        ``(arrays, optimizer_steps)`` as :meth:`trlsim.network.Layer.load_state`
        takes them (masks come from the trace's layer groups or the network).
    """
    own = not isinstance(path_or_file, h5py.File)
    f = h5py.File(path_or_file, "r", swmr=True) if own else path_or_file
    try:
        snaps = f["snapshots"]
        count = snaps["step"].shape[0]
        if count == 0:
            raise TraceError(f"{f.filename} holds no snapshot to start from")
        if not -count <= which < count:
            raise TraceError(f"{f.filename} has {count} snapshots; asked for {which}")
        which %= count
        layers = []
        for key in sorted(snaps["layers"], key=int):
            group = snaps["layers"][key]
            arrays = {name: group[name][which] for name in group
                      if name != "optimizer_steps"}
            layers.append((arrays, int(group["optimizer_steps"][which])))
        position = {k: int(snaps[k][which]) for k in ("step", "epoch", "batch")}
        return {"index": which, "layers": layers, "n_steps": position["step"],
                **position}
    finally:
        if own:
            f.close()


def restore(network, snapshot):
    """Load a :func:`read_snapshot` result into ``network``."""
    for layer, (arrays, steps) in zip(network.layers, snapshot["layers"]):
        arrays = dict(arrays)
        arrays.setdefault("mask", layer.mask)
        for name, array in layer.state().items():
            if 0 in array.shape:
                arrays.setdefault(name, array)
        layer.load_state(arrays, steps)
    network.n_steps = snapshot["n_steps"]


def check_format(f):
    """Refuse a file that is not a trace, or one from a newer trlsim."""
    if f.attrs.get("format") != FORMAT:
        raise TraceError(f"{f.filename} is not a trlsim trace (no format attribute "
                         f"{FORMAT!r})")
    try:
        version = int(f.attrs.get("format_version", -1))
    except (TypeError, ValueError):
        raise TraceError(f"{f.filename} has an unreadable format_version "
                         f"{f.attrs.get('format_version')!r}") from None
    if version > FORMAT_VERSION or version < 1:
        raise TraceError(
            f"{f.filename} has trace format version {version}; this trlsim "
            f"({__version__}) reads version {FORMAT_VERSION}: upgrade trlsim"
        )


def prepare_resume(path, config_dict, ignore=("output", "record.file")):
    """Make a trace ready to continue from its last snapshot.

    The trace is copied, with every record made after that snapshot dropped
    (the resumed run makes them again), into a new file that then replaces the
    original; the original stays untouched until the copy is complete.

    Parameters
    ----------
    path : str or Path
        The trace.
    config_dict : dict
        ``Config.to_dict()`` of the run that resumes; it must equal the one the
        trace was made with, except for the tables/keys in ``ignore`` and
        ``training.threads``.

    Returns
    -------
    dict
        The snapshot (:func:`read_snapshot`) and the trace's stored attributes.
    """
    path = Path(path)
    if not path.exists():
        raise TraceError(f"cannot resume: {path} does not exist")
    with h5py.File(path, "r", swmr=True) as src:
        check_format(src)
        recorded = json.loads(src.attrs.get("config_json", "{}"))
        differences = config_differences(recorded, config_dict,
                                         (*ignore, "training.threads"))
        if differences:
            raise TraceError(
                f"cannot resume {path}: the configuration differs from the one "
                f"it was recorded with: " + "; ".join(differences)
            )
        snapshot = read_snapshot(src)
        attrs = dict(src.attrs)
        partial = path.with_name(path.name + ".resume-partial")
        with h5py.File(partial, "w", libver=LIBVER) as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name=name)
            _truncate_after(dst, snapshot)
            write_results(dst, "running")
    os.replace(partial, path)
    return {"snapshot": snapshot, "attrs": attrs}


def _truncate_after(f, snapshot):
    """Drop records made after ``snapshot``'s step, and later snapshots."""
    keep = {}
    for cadence in CADENCES:
        steps = f[f"steps/{cadence}/step"][:]
        keep[f"/steps/{cadence}"] = int(np.searchsorted(steps, snapshot["step"],
                                                        side="right"))

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset) or obj.maxshape[:1] != (None,):
            return
        index = obj.attrs.get("step_index")
        if index is None and name.startswith("steps/"):
            index = "/" + name.rsplit("/", 1)[0]
        if index in keep:
            obj.resize(keep[index], axis=0)
        elif name.startswith("snapshots/"):
            obj.resize(snapshot["index"] + 1, axis=0)

    f.visititems(visit)


def config_differences(recorded, current, ignore=()):
    """``["[table] key: recorded -> current", ...]`` for keys that differ."""
    differences = []
    for table in sorted(set(recorded) | set(current)):
        if table in ignore:
            continue
        old, new = recorded.get(table, {}), current.get(table, {})
        for key in sorted(set(old) | set(new)):
            if f"{table}.{key}" in ignore:
                continue
            if old.get(key) != new.get(key):
                differences.append(f"[{table}] {key}: {old.get(key)!r} in the trace, "
                                   f"{new.get(key)!r} now")
    return differences
