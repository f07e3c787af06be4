"""The ``trlsim`` command: a thin shell over :mod:`trlsim.experiment`.

The library never prints; this module owns the terminal: it sets the log level
(``-v``/``-q``), draws the progress bar and reports the summary.
"""

import logging
import sys
import tomllib

import click

from . import __version__
from .config import ConfigError, load_config, reference_markdown
from .backend import BackendError
from .data import DataError
from .experiment import OutputExists, run as run_experiment
from .record import TraceError
from .train import TrainingDiverged


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trlsim")
def main():
    """Simulate Temporal Regularized Learning, neuron by neuron."""


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--epochs", type=int, help="Override [training] epochs.")
@click.option("--seed", type=int, help="Override [training] seed.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (default: [output] dir, else runs/<CONFIG name>).")
@click.option("--threads", type=int, help="Override [training] threads.")
@click.option("--set", "assignments", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override any config key, value in TOML syntax "
                   "(e.g. --set training.train_layers=[0]). Repeatable.")
@click.option("--resume", type=click.Path(dir_okay=False, exists=True),
              metavar="TRACE",
              help="Continue the run recorded in TRACE from its last snapshot.")
@click.option("--overwrite", is_flag=True,
              help="Replace a previous run's summary in the output folder.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the summary.")
def run(config_path, epochs, seed, out, threads, assignments, resume, overwrite,
        verbose, quiet):
    """Train the network CONFIG describes and probe it.

    Prints a progress bar, then the probe accuracy of the trained network
    beside that of the same network untrained, and writes summary.json to
    the output folder. Ctrl-C stops after the current step and keeps what
    was done in the summary.
    """
    _setup_logging(verbose, quiet)
    try:
        config = load_config(config_path)
        overrides = {
            key: value
            for key, value in (("training.epochs", epochs), ("training.seed", seed),
                               ("training.threads", threads))
            if value is not None
        }
        overrides.update(_parse_assignments(assignments, config_path))
        if overrides:
            config = config.replace(**overrides)
        with _ProgressBar(quiet) as bar:
            summary = run_experiment(config, out=out, overwrite=overwrite,
                                     on_train=bar.update, on_stage=bar.stage,
                                     resume=resume)
    except (ConfigError, DataError, OutputExists, TrainingDiverged, TraceError,
            BackendError, NotImplementedError, OSError) as err:
        raise click.ClickException(str(err)) from None
    _report(summary)
    if summary["status"] == "interrupted":
        sys.exit(130)


@main.command("config-reference")
def config_reference():
    """Print every configuration key, its default and valid values."""
    click.echo(reference_markdown())


def _parse_assignments(assignments, source):
    """``["training.seed=3", ...]`` to ``{"training.seed": 3, ...}``."""
    overrides = {}
    for text in assignments:
        key, eq, value = text.partition("=")
        if not eq or "." not in key:
            raise ConfigError(
                f"{source}: --set {text!r}: expected TABLE.KEY=VALUE, "
                f"e.g. --set training.train_layers=[0]"
            )
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = value  # a bare word is taken as a string
    return overrides


class _ProgressBar:
    """A click progress bar fed by training progress reports."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.bar = None
        self.done = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close()
        return False

    def stage(self, text):
        self._close()
        if not self.quiet:
            click.echo(f"trlsim: {text}", err=True)

    def update(self, progress):
        if self.quiet:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=progress.total_steps, label="train",
                                         file=sys.stderr, show_eta=True,
                                         item_show_func=lambda item: item)
            self.bar.__enter__()
        first = progress.losses[0]
        self.bar.current_item = (
            f"{progress.samples_per_second:,.0f} samples/s  epoch {progress.epoch + 1}"
            f"  L0 sim {first['sim']:.3f} var {first['var']:.3f}"
            f" cov {first['cov']:.3f} lat {first['lat']:.4f}"
        )
        self.bar.update(progress.step - self.done)
        self.done = progress.step

    def _close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _report(summary):
    training = summary["training"]
    lines = [
        "",
        f"status:        {summary['status']}",
        f"layers:        {'-'.join(map(str, summary['layer_sizes']))}"
        f"  (learning: {summary['learning_layers']})",
        f"training:      {training['steps']} steps, {training['samples']:,} samples "
        f"in {training['wall_time']:.1f} s "
        f"({training['samples_per_second']:,.0f} samples/s)",
    ]
    if "probe" in summary:
        probe = summary["probe"]
        lines.append(
            f"probe:         test {100 * probe['test_accuracy']:.2f}%  "
            f"train {100 * probe['train_accuracy']:.2f}%  "
            f"({probe['epochs']} epochs)"
        )
    if "baseline_probe" in summary:
        base = summary["baseline_probe"]
        lines.append(
            f"untrained:     test {100 * base['test_accuracy']:.2f}%  "
            f"train {100 * base['train_accuracy']:.2f}%  (same seed, same probe)"
        )
    if "note" in summary:
        lines.append(f"note:          {summary['note']}")
    lines.append(f"summary:       {summary['output_dir']}/summary.json")
    click.echo("\n".join(lines))


def _setup_logging(verbose, quiet):
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO,
                                         logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numba").setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)


# -- reading traces ----------------------------------------------------------------
# matplotlib and the analysis modules are imported inside these commands, so
# that `trlsim run` does not pay for them.


@main.command()
@click.argument("trace_path", metavar="TRACE", type=click.Path(dir_okay=False))
def inspect(trace_path):
    """Summarise the trace TRACE: run, recorded fields, snapshots, results."""
    from .trace import open_trace

    try:
        with open_trace(trace_path) as trace:
            click.echo("\n".join(_describe_trace(trace)))
    except (TraceError, KeyError, ValueError, OSError) as err:
        raise click.ClickException(_message(err)) from None


@main.command()
@click.argument("trace_path", metavar="TRACE", type=click.Path(dir_okay=False))
@click.argument("kind", metavar="KIND")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="File to write (.png, .pdf or .svg); with KIND 'all', a folder.",
)
@click.option(
    "--layer",
    type=int,
    default=0,
    show_default=True,
    help="Hidden layer of the per-layer plots.",
)
@click.option(
    "--dpi", type=int, default=150, show_default=True, help="Resolution of PNG files."
)
def plot(trace_path, kind, output, layer, dpi):
    """Draw a plot of the trace TRACE.

    KIND is one of: losses, memory, receptive-fields, lateral, selectivity,
    probe; or 'all' to write every plot the trace can make into the folder
    OUTPUT as PNG files, skipping those whose fields were not recorded.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    from .analysis import MissingDataError
    from .plots import LAYER_ARGUMENT, PLOTS, save_plot
    from .trace import open_trace

    if kind != "all" and kind not in PLOTS:
        raise click.BadParameter(
            f"{kind!r}; choose one of: {', '.join(PLOTS)}, all", param_hint="KIND"
        )
    try:
        with open_trace(trace_path) as trace:
            if kind != "all":
                layer_option = None if LAYER_ARGUMENT[kind] is None else layer
                path = save_plot(trace, kind, output, layer=layer_option, dpi=dpi)
                click.echo(f"wrote {path}")
                return
            folder = Path(output)
            folder.mkdir(parents=True, exist_ok=True)
            for name in PLOTS:
                layer_option = None if LAYER_ARGUMENT[name] is None else layer
                try:
                    path = save_plot(
                        trace, name, folder / f"{name}.png", layer=layer_option, dpi=dpi
                    )
                except (MissingDataError, ValueError) as err:
                    click.echo(f"skipped {name}: {err}")
                else:
                    click.echo(f"wrote {path}")
    except (TraceError, KeyError, ValueError, OSError) as err:
        raise click.ClickException(_message(err)) from None


def _message(err):
    # A KeyError's str() is the repr of its argument; show the text itself.
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def _describe_trace(trace):
    """The lines ``trlsim inspect`` prints."""
    from .record import FIELDS

    attrs, f = trace.attrs, trace.file
    versions = attrs.get("versions") or {}
    sizes = "-".join(map(str, trace.layer_sizes))
    lines = [
        f"trace:       {trace.path}",
        f"format:      {attrs.get('format')} version {attrs.get('format_version')}, "
        f"written by trlsim {versions.get('trlsim', '?')} "
        f"(created {attrs.get('created', '?')})",
        f"status:      {trace.status}",
        f"network:     {sizes}, rule {attrs.get('rule', '?')}, "
        f"seed {attrs.get('seed', '?')}",
    ]
    if "dataset" in attrs:
        details = [str(attrs["dataset"])]
        if "image_shape" in attrs:
            details.append("images " + "x".join(map(str, attrs["image_shape"])))
        if "n_classes" in attrs:
            details.append(f"{attrs['n_classes']} classes")
        if "batches_per_epoch" in attrs:
            details.append(f"{attrs['batches_per_epoch']} batches per epoch")
        lines.append(f"dataset:     {', '.join(details)}")

    subsets = []
    for index in trace.layers:
        group = f[f"layers/{index}"]
        n_rec, n_all = len(group.attrs["neurons"]), int(group.attrs["n_neurons"])
        if n_rec != n_all:
            subsets.append(f"layer {index}: {n_rec} of {n_all}")
    lines.append(
        f"recorded:    layers {', '.join(map(str, trace.layers)) or 'none'}, "
        f"neurons: {', '.join(subsets) if subsets else 'all'}"
    )
    if trace.fields:
        header = " | ".join(f"layer {i}" for i in trace.layers)
        rows = [
            (
                "field",
                "every",
                "records",
                "steps",
                f"shape per record " f"({header})",
                "units",
            )
        ]
        for field in trace.fields:
            cadence = FIELDS[field][0]
            steps = f[f"steps/{cadence}/step"]
            datasets = [
                f[f"layers/{i}/{field}"]
                for i in trace.layers
                if f"layers/{i}/{field}" in f
            ]
            count = min([steps.shape[0], *(ds.shape[0] for ds in datasets)])
            span = f"{steps[0]}..{steps[count - 1]}" if count else "-"
            shapes = " | ".join("x".join(map(str, ds.shape[1:])) for ds in datasets)
            units = datasets[0].attrs.get("units", "") if datasets else ""
            rows.append(
                (
                    field,
                    str(f[f"steps/{cadence}"].attrs["every"]),
                    str(count),
                    span,
                    shapes,
                    str(units),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            lines.append(
                "  "
                + "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths)
                ).rstrip()
            )
    else:
        lines.append("  no fields")
    if "probe_set/x" in f:
        labels = "with labels" if "probe_set/y" in f else "without labels"
        lines.append(f"probe set:   {f['probe_set/x'].shape[0]} inputs {labels}")

    steps = [int(s) for s in trace.snapshot_steps()]
    if len(steps) > 8:
        shown = (
            ", ".join(map(str, steps[:3])) + ", ..., " + ", ".join(map(str, steps[-2:]))
        )
    else:
        shown = ", ".join(map(str, steps))
    lines.append(
        f"snapshots:   {len(steps)}" + (f", at steps {shown}" if steps else "")
    )
    lines.extend(_describe_results(trace))
    return lines


def _describe_results(trace):
    summary = trace.summary or {}
    baseline = summary.get("baseline_probe") or trace.attrs.get("baseline_probe")

    def accuracy(result):
        return (
            f"test {100 * result['test_accuracy']:.2f}%, train "
            f"{100 * result['train_accuracy']:.2f}% ({result['epochs']} epochs)"
        )

    if trace.summary is None:
        lines = [f"results:     none stored yet (status {trace.status})"]
    else:
        lines = ["results:"]
    if "probe" in summary:
        lines.append(f"  probe:     {accuracy(summary['probe'])}")
    if isinstance(baseline, dict):
        lines.append(f"  untrained: {accuracy(baseline)}")
    training = summary.get("training")
    if training:
        lines.append(
            f"  training:  {training['steps']} steps, {training['samples']:,} "
            f"samples in {training['wall_time']:.1f} s "
            f"({training['samples_per_second']:,.0f} samples/s)"
        )
    if "note" in summary:
        lines.append(f"  note:      {summary['note']}")
    return lines


# -- sweeps ------------------------------------------------------------------------
# dask is imported only when a sweep runs, so that the other commands, `report`
# included, and `import trlsim` never need it.


@main.command()
@click.argument("sweep_path", metavar="SWEEP", type=click.Path(dir_okay=False))
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="Run on the Dask scheduler at ADDRESS (e.g. tcp://host:8786) instead of "
    "local worker processes.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Local worker processes (default: one per core, at most one per point).",
)
@click.option(
    "--threads-per-worker",
    type=click.IntRange(min=1),
    help="Points each local worker runs at once (default 1).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the table.")
def sweep(sweep_path, scheduler, workers, threads_per_worker, verbose, quiet):
    """Run every point of the sweep file SWEEP, each as one Dask task.

    Each point writes its own folder under the sweep's [sweep] out; points
    finished in an earlier run are skipped. Prints progress, then the table
    of probe test accuracy over seeds, also written as results.md and
    results.csv. Exits with status 1 if a point failed (failed.json says
    why), 130 if interrupted: running the sweep again continues it.
    Numba threads per point are the cores divided among the workers.
    """
    from .sweep import MissingDependency, load_sweep, run_sweep

    _setup_logging(verbose, quiet)
    _setup_dask_logging(verbose)
    if scheduler and (workers or threads_per_worker):
        raise click.UsageError(
            "--workers and --threads-per-worker size local workers; they cannot "
            "be used with --scheduler"
        )
    try:
        plan = load_sweep(sweep_path)
        if not quiet:
            click.echo(
                f"trlsim: sweep {plan.name}: {len(plan.points)} points into "
                f"{plan.out}",
                err=True,
            )
        result = run_sweep(
            plan,
            scheduler=scheduler,
            n_workers=workers,
            threads_per_worker=threads_per_worker,
            on_event=None if quiet else _echo_sweep_event,
        )
    except (ConfigError, MissingDependency, OSError) as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo(
            "trlsim: sweep interrupted; run it again to continue with the points "
            "not finished",
            err=True,
        )
        sys.exit(130)
    _echo_sweep_report(result.report, quiet)
    if result.failed:
        click.echo(
            f"trlsim: {len(result.failed)} of {len(plan.points)} points failed; "
            f"their errors are in {result.report.folder / 'failed.json'}",
            err=True,
        )
        sys.exit(1)


@main.command()
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False))
def report(folder):
    """Rebuild the results table of the sweep folder DIR from its points.

    Reads each point's summary.json (and error.json), prints the table and
    rewrites results.md, results.csv and failed.json; it works while the
    sweep still runs, counting the points not done yet as missing.
    """
    from .sweep import SweepError, write_report

    try:
        table = write_report(folder)
    except (SweepError, OSError) as err:
        raise click.ClickException(str(err)) from None
    _echo_sweep_report(table, quiet=False)


def _setup_dask_logging(verbose):
    try:
        # Imported now, as it sets its own log levels on import.
        import distributed  # noqa: F401
    except ImportError:
        return  # run_sweep says what to install
    level = (logging.ERROR, logging.WARNING, logging.INFO)[min(verbose, 2)]
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(level)


def _echo_sweep_event(event):
    text = {
        "cluster": f"running on {event.message}",
        "skipped": f"skipped   {event.point} (finished before)",
        "started": f"started   {event.point} {event.message}",
        "retried": f"retried   {event.point} ({event.message})",
        "failed": f"FAILED    {event.point}: "
        + (event.message.splitlines() or [""])[0],
    }.get(event.kind)
    if event.kind == "finished":
        record = event.record
        text = f"finished  {event.point}"
        if record.get("test_accuracy") is not None:
            text += f": test {record['test_accuracy']:.2f}%"
        if record.get("baseline_accuracy") is not None:
            text += f" (untrained {record['baseline_accuracy']:.2f}%)"
        text += f" in {record['wall_time']:.1f} s"
    if text is None:
        return
    width = len(str(event.total))
    click.echo(
        f"[{event.done:>{width}}/{event.total} done, {event.running} running, "
        f"{event.failed} failed] {text}",
        err=True,
    )


def _echo_sweep_report(table, quiet):
    click.echo(table.markdown, nl=False)
    if not quiet:
        click.echo(
            f"\nwrote {table.folder / 'results.md'}, {table.folder / 'results.csv'}",
            err=True,
        )


if __name__ == "__main__":
    main()
