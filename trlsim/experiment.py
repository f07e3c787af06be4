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
from .data import load_dataset
from .network import Network
from .probe import evaluate
from .streams import Stream
from .train import Trainer

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
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


def run(config, out=None, overwrite=False, on_train=None, on_stage=None):
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

    Returns
    -------
    dict
        The summary, also written to ``<out>/summary.json``.
    """
    stage = on_stage or (lambda text: None)
    folder = prepare_output(output_dir(config, out), overwrite)
    (folder / CONFIG_FILE).write_text(config.text or _as_toml(config.to_dict()))
    started = datetime.datetime.now(datetime.timezone.utc)
    d, t, p = config.data, config.training, config.probe

    stage(f"loading {d.dataset}")
    dataset = load_dataset(d.dataset, d.path, d.train_limit, d.test_limit)
    network = Network.from_config(config, n_inputs=dataset.n_features)
    stream_seed, probe_seed = np.random.SeedSequence(t.seed).spawn(2)
    stream = Stream(dataset.train_x, dataset.train_y, d.batch_size, d.chunk_size,
                    d.order, d.coherence, seed=stream_seed)
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

    if p.enabled and p.baseline:
        summary["baseline_probe"] = probe("untrained network")

    trainer = Trainer(network, stream, t.epochs, t.schedule)
    stage(f"training: {trainer.total_steps} steps")
    trained = trainer.run(progress=on_train)
    summary["training"] = trained.to_dict()

    if trained.interrupted:
        summary["status"] = "interrupted"
        summary["note"] = (
            f"stopped by the user after {trained.steps} of {trainer.total_steps} "
            f"steps; the probe was skipped"
        )
    else:
        if p.enabled:
            summary["probe"] = probe("trained network")
        summary["status"] = "finished"
    summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    write_summary(folder, summary)
    summary["output_dir"] = str(folder)
    return summary


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
