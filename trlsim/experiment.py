"""One run of a configuration, end to end: what ``trlsim run`` does.

:func:`run` loads the data, builds the network, probes it untrained (the
baseline every result needs beside it, spec section 5), trains it, probes it
again and writes a machine-readable summary. Each piece is also usable on its
own: :func:`trlsim.data.load_dataset`, :class:`trlsim.Network`,
:class:`trlsim.train.Trainer`, :func:`trlsim.probe.evaluate`.
"""

import datetime
import json
import logging
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np

from . import __version__
from .config import TRANSFORM_ORDERS
from .data import IDX_NORMALISATION, load_dataset
from .network import Network
from .probe import evaluate
from .record import Recorder, prepare_resume, restore
from .streams import Stream
from .timestreams import TransformStream
from .train import Position, Trainer

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
TRACE_FILE = "trace.h5"
CONFIG_FILE = "config.toml"


class OutputExists(FileExistsError):
    """The output folder already holds a finished or interrupted run."""


def output_dir(config, out=None):
    """The folder a run of ``config`` writes to."""
    if out is not None:
        return Path(out)
    if config.output.dir is not None:
        return Path(config.output.dir)
    stem = Path(config.source).stem if config.source.endswith(".toml") else "run"
    return Path("runs") / stem


def prepare_output(folder, overwrite=False):
    """Create ``folder``; refuse one that already holds a summary."""
    folder = Path(folder)
    summary = folder / SUMMARY_FILE
    if summary.exists() and not overwrite:
        raise OutputExists(
            f"{folder} already holds a run ({SUMMARY_FILE}); choose another "
            f"output folder (--out) or pass --overwrite to replace it"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create output folder {folder}: {err.strerror}") from err
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"output folder {folder} is not writable")
    return folder


def run(config, out=None, overwrite=False, on_train=None, on_stage=None,
        resume=None):
    """Train and evaluate the network ``config`` describes.

    Parameters
    ----------
    config : trlsim.config.Config
    out : path, optional
        Output folder (defaults to ``[output] dir``, else ``runs/<config>``).
    overwrite : bool
        Replace a previous run's summary in the folder.
    on_train : callable, optional
        Receives :class:`trlsim.train.Progress` during training.
    on_stage : callable, optional
        Called with a short description as each stage starts (loading,
        baseline probe, training, probe).
    resume : path, optional
        A trace of an earlier run of the same configuration: continue from its
        last snapshot and append to it (see :func:`trlsim.record.prepare_resume`).

    Returns
    -------
    dict
        The summary, also written to ``<out>/summary.json``.
    """
    stage = on_stage or (lambda text: None)
    resumed = None
    if resume is not None:
        stage(f"resuming from {resume}")
        resumed = prepare_resume(resume, config.to_dict())
    folder = prepare_output(output_dir(config, out), overwrite or resumed is not None)
    (folder / CONFIG_FILE).write_text(
        f"# Settings of this run, every key resolved (from {config.source}).\n"
        f"# `trlsim run` on this file repeats the run.\n\n"
        + _as_toml(config.to_dict())
    )
    started = datetime.datetime.now(datetime.timezone.utc)
    d, t, p = config.data, config.training, config.probe

    stage(f"loading {d.dataset}")
    dataset = load_dataset(d.dataset, d.path, d.train_limit, d.test_limit)
    network = Network.from_config(config, n_inputs=dataset.n_features)
    stream_seed, probe_seed = np.random.SeedSequence(t.seed).spawn(2)
    stream = make_stream(config, dataset, stream_seed)
    probe_seed = int(probe_seed.generate_state(1)[0])

    summary = {
        "trlsim_version": __version__,
        "started": started.isoformat(timespec="seconds"),
        "config_source": config.source,
        "config": config.to_dict(),
        "dataset": {"name": dataset.name, "n_train": dataset.n_train,
                    "n_test": dataset.n_test, "n_features": dataset.n_features},
        "layer_sizes": network.layer_sizes,
        "learning_layers": sorted(network.learning),
        "machine": {"python": platform.python_version(),
                    "numba": numba.__version__, "numpy": np.__version__,
                    "threads": numba.get_num_threads(),
                    "backend": network.backend.name},
        "status": "running",
    }

    def probe(label):
        stage(f"probe ({label}): {p.epochs} epochs")
        begin = time.perf_counter()
        result = evaluate(network, dataset, p.epochs, p.layers, p.learning_rate,
                          p.batch_size, seed=probe_seed)
        record = result.to_dict()
        record["wall_time"] = time.perf_counter() - begin
        return record

    start = None
    if resumed is not None:
        baseline = resumed["attrs"].get("baseline_probe")
        if baseline is not None:
            summary["baseline_probe"] = json.loads(baseline)
        snapshot = resumed["snapshot"]
        restore(network, snapshot)
        start = Position(snapshot["epoch"], snapshot["batch"], snapshot["n_steps"])
        summary["resumed_from"] = {"trace": str(resume), **vars(start)}
    elif p.enabled and p.baseline:
        summary["baseline_probe"] = probe("untrained network")

    trainer = Trainer(network, stream, t.epochs, t.schedule)
    recorder = None
    if config.record.enabled:
        trace_path = Path(resume) if resume else folder / (config.record.file
                                                           or TRACE_FILE)
        recorder = make_recorder(config, network, dataset, trace_path,
                                 trainer.stream.n_batches, overwrite,
                                 summary.get("baseline_probe"), resume is not None)
        trainer.observers.append(recorder)
        summary["trace"] = str(trace_path)
    stage(f"training: {trainer.total_steps} steps")
    try:
        _train_and_probe(trainer, start, on_train, summary, probe, config, folder)
    except BaseException:
        if recorder is not None:
            recorder.close("failed")
        raise
    if recorder is not None:
        recorder.close(summary["status"], results=summary)
    summary["output_dir"] = str(folder)
    return summary


def _train_and_probe(trainer, start, on_train, summary, probe, config, folder):
    """Train, probe the result and write the summary (the middle of :func:`run`)."""
    trained = trainer.run(progress=on_train, start=start)
    summary["training"] = trained.to_dict()
    if trained.interrupted:
        summary["status"] = "interrupted"
        summary["note"] = (
            f"stopped by the user after {trained.steps} of {trainer.total_steps} "
            f"steps; the probe was skipped"
        )
        if "trace" in summary:
            summary["note"] += (
                f"; the trace holds a snapshot of this point: continue with "
                f"trlsim run {config.source} --resume {summary['trace']}"
            )
    else:
        if config.probe.enabled:
            summary["probe"] = probe("trained network")
        summary["status"] = "finished"
    summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    write_summary(folder, summary)


def make_stream(config, dataset, seed):
    """The training stream ``[data]`` (and ``[online]``) describe."""
    d = config.data
    # Online, a "batch" is a block of samples learned one by one.
    rows = config.online.block if config.online.online else d.batch_size
    if d.order not in TRANSFORM_ORDERS:
        return Stream(dataset.train_x, dataset.train_y, rows, d.chunk_size, d.order,
                      d.coherence, seed=seed)
    # Back to [0, 1] pixels: the stream warps images, then normalises frames
    # with the dataset's constants, so they match what the probe sees.
    mean, std = IDX_NORMALISATION[dataset.name]
    images = np.clip(dataset.train_x * std + mean, 0.0, 1.0).reshape(
        -1, *dataset.image_shape)
    return TransformStream(images, dataset.train_y, frames=d.frames,
                           transform=d.order, segments=d.segments, batch_size=rows,
                           seed=seed, mean=mean, std=std)


def make_recorder(config, network, dataset, path, n_batches, overwrite=False,
                  baseline_probe=None, resume=False):
    """The :class:`trlsim.record.Recorder` that ``[record]`` describes."""
    r = config.record
    fields = r.fields
    probe_x = probe_y = None
    if "activations" in fields:
        count = min(r.probe_samples, dataset.n_test)
        probe_x, probe_y = dataset.test_x[:count], dataset.test_y[:count]
    metadata = {
        "config": config.text or _as_toml(config.to_dict()),
        "config_json": json.dumps(config.to_dict()),
        "dataset": dataset.name,
        "image_shape": np.array(dataset.image_shape),
        "n_classes": dataset.n_classes,
        "batches_per_epoch": n_batches,
    }
    if baseline_probe is not None:
        metadata["baseline_probe"] = json.dumps(baseline_probe)
    return Recorder(
        path, network, fields=fields, every=r.every,
        weights_every=r.weights_every or n_batches,
        activations_every=r.activations_every or n_batches,
        layers=r.layers, neurons=r.neurons, probe_x=probe_x, probe_y=probe_y,
        compression=None if r.compression == "none" else r.compression,
        flush_seconds=r.flush_seconds, snapshot_every=r.snapshot_every,
        metadata=metadata, overwrite=overwrite, resume=resume,
    )


def write_summary(folder, summary):
    """Write ``summary.json`` atomically (a partial file never replaces it)."""
    path = Path(folder) / SUMMARY_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, path)
    return path


def _as_toml(tables):
    """A TOML rendering of ``Config.to_dict()``, for runs built in Python."""
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        for key, value in keys.items():
            if value is not None:
                lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
