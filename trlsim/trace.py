"""Reading a trace: recorded fields as arrays, metadata, snapshots.

:func:`open_trace` opens a file written by :class:`trlsim.record.Recorder`,
also while a run is still writing it (HDF5 SWMR). Datasets are read when asked
for, so a large trace costs nothing until a field is used; ``lazy=True`` hands
back the h5py dataset itself, to slice without loading it whole.

Examples
--------
>>> trace = open_trace("runs/mnist/trace.h5")            # doctest: +SKIP
>>> trace.records("var", layer=0)[-1]                    # doctest: +SKIP
>>> net = trace.network(snapshot=-1)                      # doctest: +SKIP
"""

import json

import h5py

from .record import (
    FIELDS,
    LOSS_COLUMNS,
    TraceError,
    check_format,
    read_results,
    read_snapshot,
    restore,
)


#: Root attributes stored as JSON text, decoded on reading.
JSON_ATTRIBUTES = ("versions", "settings", "network_config", "fields", "config_json",
                   "baseline_probe")


def open_trace(path):
    """Open a trace for reading; see :class:`Trace`."""
    return Trace(path)


class Trace:
    """A recorded run.

    Attributes
    ----------
    path : str
    attrs : dict
        Root attributes (format version, versions, config text, seed, layer
        sizes, rule, ...); JSON-encoded ones are decoded.
    layer_sizes : list of int
    layers : list of int
        Recorded layers.
    fields : list of str
        Recorded fields.
    status : str
        "running", "finished", "interrupted" or "failed".
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            self._file = h5py.File(self.path, "r", swmr=True)
        except FileNotFoundError:
            raise TraceError(f"{self.path}: no such trace file") from None
        except OSError as err:
            raise TraceError(f"{self.path}: cannot open as HDF5 ({err})") from None
        try:
            check_format(self._file)
        except TraceError:
            self._file.close()
            raise
        self.attrs = {}
        for key, value in self._file.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if key in JSON_ATTRIBUTES:
                value = json.loads(value)
            self.attrs[key] = value
        self.layer_sizes = [int(n) for n in self.attrs["layer_sizes"]]
        self.layers = sorted(int(k) for k in self._file.get("layers", {}))
        self.fields = list(self.attrs.get("fields", []))

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def refresh(self):
        """See what a live writer appended since the trace was opened."""
        for name in ("steps", "layers", "snapshots", "results"):
            if name in self._file:
                self._file[name].visititems(
                    lambda _, obj: obj.refresh() if isinstance(obj, h5py.Dataset)
                    else None)

    @property
    def status(self):
        self._file["results/status"].refresh()
        return read_results(self._file)[0]

    @property
    def summary(self):
        """The run summary stored at the end (a dict), or None."""
        self._file["results/summary"].refresh()
        return read_results(self._file)[1]

    @property
    def file(self):
        """The open ``h5py.File``, for anything this class does not cover."""
        return self._file

    def _dataset(self, field, layer):
        if field not in FIELDS:
            raise KeyError(f"unknown field {field!r}; fields: {', '.join(FIELDS)}")
        key = f"layers/{layer}/{field}"
        if key not in self._file:
            raise KeyError(
                f"{self.path} has no {field!r} for layer {layer}; recorded fields "
                f"{self.fields} for layers {self.layers}"
            )
        return self._file[key]

    def records(self, field, layer=0, lazy=False):
        """Samples of ``field`` for ``layer``, time first.

        ``(n_records, n_neurons)`` for memory units and bias,
        ``(n_records, 5)`` for losses (columns :data:`LOSS_COLUMNS`),
        ``(n_records, n_recorded, n_inputs)`` for weights, ``(n_records,
        n_recorded, n_neurons)`` for lateral (rows of the recorded neurons) and
        ``(n_records, n_samples, n_recorded)`` for activations on the probe
        set, where ``n_recorded`` counts the neurons :meth:`neurons` lists.
        """
        ds = self._dataset(field, layer)
        return ds if lazy else ds[()]

    def steps(self, field):
        """Learning step of each sample of ``field`` (int64)."""
        cadence = FIELDS[field][0]
        return self._file[f"steps/{cadence}/step"][()]

    def epochs(self, field):
        """Epoch (from 0) in which each sample of ``field`` was made."""
        cadence = FIELDS[field][0]
        return self._file[f"steps/{cadence}/epoch"][()]

    def neurons(self, layer):
        """Indices of the recorded neurons of ``layer``."""
        return self._file[f"layers/{layer}"].attrs["neurons"][()]

    def losses(self, layer=0):
        """Loss terms of ``layer`` over time: dict of column -> array, with
        ``step``."""
        values = self.records("losses", layer)
        out = {name: values[:, i] for i, name in enumerate(LOSS_COLUMNS)}
        out["step"] = self.steps("losses")
        return out

    def probe_set(self):
        """``(x, y)`` of the fixed probe set (``y`` may be None)."""
        if "probe_set/x" not in self._file:
            raise KeyError(f"{self.path} has no probe set")
        y = self._file["probe_set/y"][()] if "probe_set/y" in self._file else None
        return self._file["probe_set/x"][()], y

    @property
    def n_snapshots(self):
        return int(self._file["snapshots/step"].shape[0])

    def snapshot_steps(self):
        return self._file["snapshots/step"][()]

    def snapshot(self, which=-1):
        """One snapshot's arrays and position (see :func:`read_snapshot`)."""
        return read_snapshot(self._file, which)

    def network(self, snapshot=-1, **settings):
        """Rebuild the network as it was at a snapshot, ready to step further.

        ``settings`` override the recorded ones (``backend``, ``threads``...).
        """
        from .config import parse_config
        from .network import Network

        config = parse_config(self.attrs["network_config"], source=self.path)
        if settings:
            config = config.replace(**{
                f"training.{k}" if k in ("backend", "threads") else k: v
                for k, v in settings.items()})
        net = Network.from_config(config, n_inputs=self.layer_sizes[0])
        state = self.snapshot(snapshot)
        restore(net, state)
        for layer in net.layers:
            if f"layers/{layer.index}/mask" in self._file:
                layer.mask[...] = self._file[f"layers/{layer.index}/mask"][()]
        return net

    def __repr__(self):
        sizes = "-".join(map(str, self.layer_sizes))
        return (f"<Trace {self.path}: {sizes} {self.attrs.get('rule')}, "
                f"{self.status}, fields {self.fields}>")
