"""Training: feed a stream to a network, epoch by epoch, under a layer schedule.

Spec section 3 gives two schedules:

* ``"concurrent"`` (TRL-S): every learning layer learns at every step, for
  ``epochs`` passes over the data.
* ``"greedy"`` (TRL): the learning layers take turns in order, each for
  ``epochs`` passes while the others stay fixed; a greedy run makes
  ``epochs * len(learning)`` passes in all.

A layer outside ``network.learning`` never learns: it keeps its initial weights
and lateral matrix, while its memory units still follow its activity (spec
section 6: the paper's table comes from such a run with only layer 0 learning).

Examples
--------
>>> import numpy as np, trlsim
>>> from trlsim.streams import Stream
>>> from trlsim.train import Trainer
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(256, 20)).astype(np.float32)
>>> y = rng.integers(0, 4, 256)
>>> net = trlsim.Network([20, 16, 8], rule="trl", chunk_size=8, seed=0)
>>> stream = Stream(x, y, batch_size=32, chunk_size=8, seed=0)
>>> result = Trainer(net, stream, epochs=2, schedule="greedy").run()
>>> result.steps, [phase.layers for phase in result.phases]
(32, [[0], [1]])
>>> result.position
Position(epoch=4, batch=0, step=32)
"""

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .kernels.cpu import LOSS_TERMS

logger = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
    """A loss became NaN or infinite; the network state is no longer usable."""


@dataclass
class Phase:
    """A stretch of training in which a fixed set of layers learns."""

    layers: list
    epochs: int


@dataclass
class Position:
    """Where a run stands: the next batch to learn from.

    ``epoch`` counts passes over the data from 0 across all phases (greedy runs
    continue the count from one layer's phase to the next), ``batch`` is the
    index of the next batch within that epoch and ``step`` the number of
    learning steps taken so far.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0  # learning steps taken: batches, or samples in online mode


@dataclass
class Progress:
    """What a progress callback receives, every ``report_every`` steps."""

    phase: int
    n_phases: int
    epoch: int
    step: int
    total_steps: int
    samples: int
    samples_per_second: float
    losses: list


@dataclass
class TrainResult:
    """What a training run did.

    ``history`` holds one record per finished epoch: the phase, the learning
    layers and, per layer, the mean of each loss term over the epoch's steps.
    Counts (``steps``, ``samples``) are of this call; ``position`` is where the
    run stands, resumed runs included.
    """

    phases: list
    position: Position = field(default_factory=Position)
    steps: int = 0
    samples: int = 0
    wall_time: float = 0.0
    interrupted: bool = False
    history: list = field(default_factory=list)

    @property
    def epochs_completed(self):
        return self.position.epoch

    @property
    def samples_per_second(self):
        return self.samples / self.wall_time if self.wall_time > 0 else 0.0

    def to_dict(self):
        return {
            "phases": [{"layers": p.layers, "epochs": p.epochs} for p in self.phases],
            "steps": self.steps,
            "samples": self.samples,
            "epochs_completed": self.epochs_completed,
            "position": vars(self.position),
            "wall_time": self.wall_time,
            "samples_per_second": self.samples_per_second,
            "interrupted": self.interrupted,
            "history": self.history,
        }


def phases_for(schedule, learning, epochs):
    """The phases of a schedule over the learning layers ``learning``."""
    if schedule not in ("greedy", "concurrent"):
        raise ValueError(
            f"unknown schedule {schedule!r}; use 'greedy' or 'concurrent'"
        )
    learning = sorted(learning)
    if schedule == "concurrent" or not learning:
        return [Phase(learning, epochs)]
    return [Phase([layer], epochs) for layer in learning]


class Trainer:
    """Runs a network over a stream.

    Parameters
    ----------
    network : trlsim.Network
    stream : trlsim.streams.Stream
    epochs : int
        Passes over the data per phase.
    schedule : {"greedy", "concurrent"}
    report_every : int
        Steps between progress reports.
    observers : sequence, optional
        Objects told about the run as it goes (a recorder, for instance): each
        may define ``after_step(network, position, losses)``,
        ``after_epoch(network, position)`` and ``at_end(network, position,
        interrupted)``, where ``position`` is the :class:`Position` after the
        step or epoch.
    """

    def __init__(self, network, stream, epochs, schedule="concurrent",
                 report_every=20, observers=()):
        if stream.n_features != network.layers[0].n_inputs:
            raise ValueError(
                f"the stream's rows have {stream.n_features} values but the "
                f"network takes {network.layers[0].n_inputs}"
            )
        self.network = network
        self.stream = stream
        self.phases = phases_for(schedule, network.learning, epochs)
        self.report_every = report_every
        self.observers = list(observers)
        self._stop = threading.Event()

    @property
    def total_epochs(self):
        return sum(p.epochs for p in self.phases)

    @property
    def rows_per_step(self):
        """Learning steps per batch: 1, or every row in online mode."""
        return self.stream.batch_size if self.network.settings.online else 1

    @property
    def total_steps(self):
        """Learning steps of the whole run (``network.n_steps`` counts them)."""
        return self.total_epochs * self.stream.n_batches * self.rows_per_step

    def stop(self):
        """Ask the run to stop after the step in progress."""
        self._stop.set()

    def _notify(self, event, *args):
        for observer in self.observers:
            method = getattr(observer, event, None)
            if method is not None:
                method(self.network, *args)

    def run(self, progress=None, start=None):
        """Train through every phase; returns a :class:`TrainResult`.

        Parameters
        ----------
        progress : callable, optional
            Receives a :class:`Progress` every ``report_every`` steps.
        start : Position, optional
            Continue from here (a resumed run): earlier epochs and batches are
            skipped. The network must hold the state it had at that point.

        Ctrl-C (SIGINT) during the run, or :meth:`stop`, ends it after the step
        in progress, so the network is never left half-updated; the result then
        has ``interrupted`` set. A loss that is not finite raises
        :class:`TrainingDiverged`.
        """
        self._stop.clear()
        position = Position(**vars(start)) if start is not None else Position()
        if not 0 <= position.epoch <= self.total_epochs:
            raise ValueError(
                f"cannot start at epoch {position.epoch}: the run has "
                f"{self.total_epochs} epochs"
            )
        result = TrainResult(phases=self.phases, position=position)
        n_layers = len(self.network.layers)
        clock = time.perf_counter()
        with _stop_on_sigint(self._stop):
            first_epoch = 0
            for phase_index, phase in enumerate(self.phases):
                epochs = range(first_epoch, first_epoch + phase.epochs)
                first_epoch += phase.epochs
                if position.epoch >= epochs.stop:
                    continue
                logger.info("phase %d: layers %s learn for %d epochs",
                            phase_index, phase.layers, phase.epochs)
                for epoch in range(position.epoch, epochs.stop):
                    sums = np.zeros((n_layers, len(LOSS_TERMS)))
                    n_steps = 0
                    starts = None
                    if self.network.settings.online and hasattr(self.stream,
                                                                "segment_starts"):
                        starts = self.stream.segment_starts(epoch)
                    size = self.stream.batch_size
                    for xb, _yb in self.stream.epoch(epoch, start=position.batch):
                        rows = None if starts is None else starts[
                            position.batch * size:(position.batch + 1) * size]
                        losses = self.network.step(xb, learning=phase.layers,
                                                   starts=rows)
                        terms = np.array([[d[k] for k in LOSS_TERMS] for d in losses])
                        if not np.isfinite(terms).all():
                            raise TrainingDiverged(
                                f"a loss became non-finite at step "
                                f"{self.network.n_steps} (epoch {epoch + 1}); "
                                f"per-layer losses: {losses}. Lower learning_rate, "
                                f"raise c_var, or check the input scaling."
                            )
                        sums += terms
                        n_steps += 1
                        position.batch += 1
                        position.step = self.network.n_steps
                        result.steps += self.rows_per_step
                        result.samples += xb.shape[0]
                        self._notify("after_step", position, losses)
                        if progress and result.steps % self.report_every == 0:
                            elapsed = time.perf_counter() - clock
                            progress(Progress(
                                phase_index, len(self.phases), epoch,
                                position.step, self.total_steps, result.samples,
                                result.samples / elapsed, losses,
                            ))
                        if self._stop.is_set():
                            break
                    if n_steps:
                        result.history.append({
                            "epoch": epoch + 1,
                            "phase": phase_index,
                            "learning": list(phase.layers),
                            "steps": n_steps,
                            "losses": [dict(zip(LOSS_TERMS, map(float, row)))
                                       for row in sums / n_steps],
                        })
                    if self._stop.is_set() and position.batch < self.stream.n_batches:
                        result.interrupted = True
                        break
                    position.epoch, position.batch = epoch + 1, 0
                    self._notify("after_epoch", position)
                    if self._stop.is_set():
                        result.interrupted = position.epoch < self.total_epochs
                        break
                if result.interrupted:
                    break
        result.wall_time = time.perf_counter() - clock
        self._notify("at_end", position, result.interrupted)
        return result


class _stop_on_sigint:
    """Turn Ctrl-C into a stop request while training runs in the main thread."""

    def __init__(self, event):
        self.event = event
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.event.is_set():
            # A second Ctrl-C means "now": fall back to the usual interrupt.
            raise KeyboardInterrupt
        self.event.set()

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False
