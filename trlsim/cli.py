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
            NotImplementedError, OSError) as err:
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


if __name__ == "__main__":
    main()
