"""Parameter sweeps: one run configuration at many settings, on a Dask cluster.

A sweep file names a base run configuration and the settings to vary. Keys
are dotted config keys (``"table.key"``), quoted or written as TOML dotted
keys::

    [sweep]
    base = "mnist_trls.toml"    # run config, relative to this file
    name = "paper-table"        # default: this file's stem
    out = "runs/paper-table"    # default: runs/<this file's stem>
    retries = 2                 # tries more after a worker died; default 2

    [set]                       # applied to every point
    "training.train_layers" = [0]

    [axes]                      # every combination of these values
    "rule.rule" = ["trl", "trl-s"]
    "network.hidden" = [[512, 256], [500, 500, 500]]
    "training.seed" = {range = [42, 47]}    # 42 to 46: stop is excluded

    [[points]]                  # or an explicit list; with [axes], crossed
    "rule.rule" = "trl"         # with their grid
    "rule.c_var" = 4.0

:func:`load_sweep` validates the file and every point's full configuration
before any work. :func:`run_sweep` runs each point as one task on
``dask.distributed``; the point writes ``<out>/<point name>/`` (its
``summary.json``, ``config.toml``, and ``trace.h5`` when ``[record]`` is on),
the name made from the settings that vary, e.g. ``rule=trl-s_seed=42``. A
point that fails writes ``error.json`` there and the sweep goes on; a point
whose summary says finished is skipped when the sweep runs again.
:func:`write_report` then tabulates the probe accuracy over seeds into
``results.csv`` and ``results.md``; it can be called at any time.

When a sweep varies ``rule.rule``, a base file's ``rule.c_var`` and
``training.schedule`` that equal its own rule's default (spec section 3)
follow each point's rule, as if unset: the example files spell out their
rule's values, which would otherwise give a TRL point TRL-S's settings.

Dask is imported only by :func:`run_sweep`: install ``trlsim[sweep]``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import difflib
import hashlib
import io
import itertools
import json
import logging
import os
import queue
import re
import socket
import statistics
import time
import tomllib
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

from .backend import BackendError
from .config import RULE_DEFAULTS, Config, ConfigError, load_config, parse_config
from .data import DataError
from .experiment import SUMMARY_FILE, run
from .record import TraceError

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
"""The sweep's description in its folder: points, their settings, what varies."""
ERROR_FILE = "error.json"
"""Written into a point's folder when the point failed."""
ATTEMPT_FILE = "attempt.json"
"""In a point's folder: which try of the latest sweep run it is, and where."""
FAILED_FILE = "failed.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"

SEED_KEY = "training.seed"
RULE_KEY = "rule.rule"
THREADS_KEY = "training.threads"

_SWEEP_TABLES = ("sweep", "set", "axes", "points")
_SWEEP_KEYS = ("base", "name", "out", "retries")
_CONFIG_KEYS = {table: tuple(keys) for table, keys in Config().to_dict().items()}
_DOTTED_KEYS = [
    f"{table}.{key}" for table, keys in _CONFIG_KEYS.items() for key in keys
]
# Keys whose default depends on the rule, and their name in RULE_DEFAULTS.
_RULE_FOLLOWERS = {"rule.c_var": "c_var", "training.schedule": "schedule"}
_NAME_LIMIT = 120
_EVENT_TOPIC = "trlsim-sweep"
_POLL_SECONDS = 0.1
_CONNECT_SECONDS = 10

# Errors that would recur on any worker: the point fails at once, no retry.
_POINT_ERRORS = (
    ValueError,
    ArithmeticError,
    NotImplementedError,
    BackendError,
    DataError,
    TraceError,
)


class SweepError(ConfigError):
    """A sweep file is invalid, or a sweep folder cannot be used as asked.

    The message names the sweep file (or folder), the table and key, the
    offending value and what would be valid.
    """


class MissingDependency(ImportError):
    """Dask or distributed, needed to run a sweep, is not installed."""


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of a sweep.

    Attributes
    ----------
    name : str
        Its folder name, from the settings that vary, e.g.
        ``rule=trl-s_seed=42``.
    settings : dict
        The dotted config keys this point sets, beyond ``[set]``, and their
        values as written in the sweep file.
    config : Config
        Its full, validated configuration.
    """

    name: str
    settings: Mapping[str, Any]
    config: Config


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A validated sweep file.

    Attributes
    ----------
    source : str
        The sweep file; error messages start with it.
    name : str
        Label of the sweep in its report.
    out : Path
        Its folder, absolute (a relative ``out`` is taken from the working
        directory); each point writes a subfolder named after the point.
    retries : int
        Times a point is tried again after its worker died or an unexpected
        error; a failure that would recur (a diverged run, a bad value) is
        not retried.
    base : str or None
        The base run configuration file, as resolved.
    fixed : dict
        The ``[set]`` keys and values.
    varied : tuple of str
        Dotted keys whose value differs between points, in file order.
    points : tuple of Point
    """

    source: str
    name: str
    out: Path
    retries: int
    base: str | None
    fixed: Mapping[str, Any]
    varied: tuple[str, ...]
    points: tuple[Point, ...]

    @property
    def group_keys(self) -> tuple[str, ...]:
        """The varied keys the report groups by: all but the seed."""
        return tuple(key for key in self.varied if key != SEED_KEY)

    def folder(self, point: Point) -> Path:
        """The output folder of ``point``."""
        return self.out / point.name


# -- reading sweep files ------------------------------------------------------------


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Read and validate a sweep file, every point's configuration included.

    Parameters
    ----------
    path : str or Path
        The TOML file; its ``[sweep] base`` is taken from its folder.

    Returns
    -------
    Sweep

    Raises
    ------
    SweepError
        If the file is missing or not TOML, a key or value is invalid, or any
        point's configuration is.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise SweepError(f"{source}: is a directory; expected a sweep TOML file")
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SweepError(f"{source}: sweep file not found") from None
    except OSError as err:
        raise SweepError(f"{source}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SweepError(f"{source}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{source}: not valid TOML: {err}") from None
    return parse_sweep(data, source=source, base_dir=path.parent, stem=path.stem)


def parse_sweep(
    data: Mapping[str, Any],
    source: str = "<dict>",
    base_dir: str | os.PathLike | None = None,
    stem: str = "sweep",
) -> Sweep:
    """Validate a sweep shaped like the TOML file.

    Parameters
    ----------
    data : mapping
        The tables ``sweep``, ``set``, ``axes`` and ``points``.
    source : str
        Name used at the start of every error message.
    base_dir : str or Path, optional
        Folder a relative ``base`` is taken from; the working directory if not
        given.
    stem : str
        Default of ``name``, and of ``out`` as ``runs/<stem>``.

    Returns
    -------
    Sweep

    Raises
    ------
    SweepError
        On the first invalid table, key or value, naming it.
    """

    def fail(problem: str) -> SweepError:
        return SweepError(f"{source}: {problem}")

    if not isinstance(data, Mapping):
        raise fail(f"expected tables of settings, got {type(data).__name__}")
    for name in data:
        if name not in _SWEEP_TABLES:
            raise _unknown(source, "", "table", name, _SWEEP_TABLES)
    head = _table(data, "sweep", source)
    for key in head:
        if key not in _SWEEP_KEYS:
            raise _unknown(source, "[sweep] ", "key", key, _SWEEP_KEYS)

    def text(key: str, default: str | None) -> str | None:
        value = head.get(key, default)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise fail(f"[sweep] {key} = {value!r}: expected a non-empty string")
        return value

    base_name = text("base", None)
    name = text("name", stem)
    # Absolute, as workers may run elsewhere than the working directory.
    out = Path(os.path.abspath(Path(text("out", f"runs/{stem}")).expanduser()))
    retries = head.get("retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise fail(f"[sweep] retries = {retries!r}: expected an integer >= 0")

    base, base_path = _load_base(base_name, base_dir, source)
    fixed = _dotted(_table(data, "set", source), "[set]", source)
    axes = _dotted(_table(data, "axes", source), "[axes]", source)
    axes = {key: _axis_values(key, value, source) for key, value in axes.items()}
    entries = _point_entries(data.get("points"), source)

    if "axes" in data and not axes and not entries:
        raise fail("[axes] is empty; give each varied key a list of values")
    if not axes and not entries:
        raise fail(
            "nothing to sweep: add [axes] (key = [values]) or [[points]] entries"
        )
    for key in fixed:
        where = "[axes]" if key in axes else "[[points]]"
        if key in axes or any(key in entry for entry in entries):
            raise fail(f"[set] {key!r} is also in {where}; give it in one place only")
    for index, entry in enumerate(entries):
        for key in entry:
            if key in axes:
                raise fail(
                    f"[[points]] entry {index + 1}: {key!r} is also in [axes]; "
                    "a key is either listed per point or an axis"
                )

    # Each combination: (its [[points]] entry or None, its settings).
    combos = []
    for index, entry in enumerate(entries or [{}]):
        for values in itertools.product(*axes.values()):
            settings = {**entry, **dict(zip(axes, values))}
            combos.append((index if entries else None, settings))
    seen: dict[Any, int] = {}
    for number, (_, settings) in enumerate(combos):
        frozen = _freeze(settings)
        if frozen in seen:
            raise fail(
                f"points {seen[frozen] + 1} and {number + 1} have the same settings "
                f"({_describe(settings)}); list each combination once"
            )
        seen[frozen] = number

    order = [key for entry in entries for key in entry] + list(axes)
    varied = _varied([settings for _, settings in combos], order)
    names = _point_names([settings for _, settings in combos], varied, source)
    base = _follow_rule(dataclasses.replace(base, source=source), fixed, combos)
    with_set = _apply(base, fixed, "[set]", axes)
    points = []
    for number, ((entry, settings), point_name) in enumerate(zip(combos, names)):
        where = f"point {number + 1} of {len(combos)} ({_describe(settings)})"
        config = _apply(with_set, settings, where, axes, entry)
        points.append(Point(point_name, settings, config))
    return Sweep(
        source=source,
        name=name,
        out=out,
        retries=retries,
        base=base_path,
        fixed=fixed,
        varied=tuple(varied),
        points=tuple(points),
    )


def _unknown(source, where, what, name, valid) -> SweepError:
    message = f"{source}: {where}unknown {what} {name!r}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    message += f"; did you mean {close[0]!r}?" if close else "."
    return SweepError(f"{message} Valid {what}s: {', '.join(valid)}")


def _table(data, name, source) -> Mapping[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, Mapping):
        raise SweepError(f"{source}: [{name}] must be a table, got {table!r}")
    return table


def _load_base(name, base_dir, source) -> tuple[Config, str | None]:
    if name is None:
        return parse_config({}, source=source), None
    path = Path(base_dir or ".", Path(name).expanduser())
    try:
        return load_config(path), str(path)
    except ConfigError as err:
        raise SweepError(f"{source}: [sweep] base = {name!r}: {err}") from None


def _dotted(table: Mapping[str, Any], where: str, source: str) -> dict[str, Any]:
    """Flatten ``{"rule": {"rule": x}}`` or ``{"rule.rule": x}`` to dotted keys."""
    flat = {}
    for key, value in table.items():
        if "." not in key and key in _CONFIG_KEYS and isinstance(value, Mapping):
            items = [(f"{key}.{inner}", item) for inner, item in value.items()]
        else:
            items = [(key, value)]
        for dotted, item in items:
            _check_key(dotted, where, source)
            flat[dotted] = item
    return flat


def _check_key(dotted: str, where: str, source: str) -> None:
    table, dot, key = dotted.partition(".")
    if dot and key in _CONFIG_KEYS.get(table, ()):
        return
    if not dot:
        homes = [f"{t}.{dotted}" for t, keys in _CONFIG_KEYS.items() if dotted in keys]
        hint = f"did you mean {homes[0]!r}?" if homes else "e.g. 'training.seed'."
        raise SweepError(
            f"{source}: {where} {dotted!r}: a config key is written 'table.key'; "
            + hint
        )
    close = difflib.get_close_matches(dotted, _DOTTED_KEYS, n=1)
    message = f"{source}: {where} unknown config key {dotted!r}"
    message += f"; did you mean {close[0]!r}?" if close else "."
    if table in _CONFIG_KEYS:
        message += f" Keys of [{table}]: {', '.join(_CONFIG_KEYS[table])}"
    else:
        message += f" Config tables: {', '.join(_CONFIG_KEYS)}"
    raise SweepError(message)


def _axis_values(key: str, value: Any, source: str) -> list:
    where = f"{source}: [axes] {key!r}"
    if isinstance(value, Mapping):
        if set(value) != {"range"}:
            raise SweepError(
                f"{where} = {value!r}: expected a list of values or "
                "{range = [start, stop]}"
            )
        bounds = value["range"]
        if (
            not isinstance(bounds, list)
            or len(bounds) not in (2, 3)
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
        ):
            raise SweepError(
                f"{where}: range = {bounds!r}: expected [start, stop] or "
                "[start, stop, step], integers"
            )
        if len(bounds) == 3 and bounds[2] == 0:
            raise SweepError(f"{where}: range = {bounds!r}: step must not be 0")
        values = list(range(*bounds))
        if not values:
            raise SweepError(
                f"{where}: range = {bounds!r} holds no value; stop is excluded, "
                "as in Python's range: [42, 47] gives 42 to 46"
            )
        return values
    if not isinstance(value, list):
        raise SweepError(
            f"{where} = {value!r}: expected a list of values, e.g. [1, 2], or "
            "{range = [start, stop]}"
        )
    if not value:
        raise SweepError(f"{where} = []: an axis needs at least one value")
    seen = set()
    for item in value:
        frozen = _freeze(item)
        if frozen in seen:
            raise SweepError(f"{where}: value {item!r} appears twice")
        seen.add(frozen)
    return value


def _point_entries(entries: Any, source: str) -> list[dict[str, Any]]:
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(
        isinstance(entry, Mapping) for entry in entries
    ):
        raise SweepError(
            f"{source}: points must be an array of tables, written [[points]]"
        )
    flat = []
    for index, entry in enumerate(entries):
        where = f"[[points]] entry {index + 1}"
        if not entry:
            raise SweepError(f"{source}: {where} is empty; give it dotted keys")
        flat.append(_dotted(entry, where + ":", source))
    return flat


def _freeze(value: Any) -> Any:
    """A hashable stand-in for a TOML value."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    if isinstance(value, Mapping):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    return (type(value).__name__, value)


def _varied(combos: list[dict[str, Any]], order: list[str]) -> list[str]:
    """Keys whose value differs between combinations (absent counts as a value)."""
    keys = list(dict.fromkeys(order))
    absent = ("absent",)
    return [
        key
        for key in keys
        if len({_freeze(settings.get(key, absent)) for settings in combos}) > 1
    ]


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "x".join(map(_label, value)) or "none"
    return repr(value) if isinstance(value, float) else str(value)


def _point_names(combos, varied, source) -> list[str]:
    """Folder names ``key=value_key=value`` from the varied settings."""
    short = [key.partition(".")[2] for key in varied]
    labels = {k: s if short.count(s) == 1 else k for k, s in zip(varied, short)}
    names: list[str] = []
    for number, settings in enumerate(combos):
        parts = [f"{labels[k]}={_label(settings[k])}" for k in varied if k in settings]
        name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(parts)).strip(".-")
        name = name or "base"
        if len(name) > _NAME_LIMIT:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            name = f"{name[:_NAME_LIMIT - 9]}-{digest}"
        if name in names:
            raise SweepError(
                f"{source}: points {names.index(name) + 1} and {number + 1} would "
                f"share the folder {name!r}; make their varied values differ in "
                "letters or digits"
            )
        names.append(name)
    return names


def _describe(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} = {value!r}" for key, value in settings.items())


def _follow_rule(base: Config, fixed, combos) -> Config:
    """Unset the base's rule-dependent keys that just spell out its rule's
    default, so that each point's rule brings its own."""
    if RULE_KEY in fixed or not any(RULE_KEY in s for _, s in combos):
        return base
    given = {table: dict(keys) for table, keys in (base.given or {}).items()}
    own = RULE_DEFAULTS[base.rule.rule]
    changed = False
    for dotted, name in _RULE_FOLLOWERS.items():
        table, _, key = dotted.partition(".")
        if dotted in fixed or any(dotted in s for _, s in combos):
            continue
        if key in given.get(table, {}) and given[table][key] == own[name]:
            del given[table][key]
            changed = True
    if not changed:
        return base
    return dataclasses.replace(parse_config(given, source=base.source), text=base.text)


def _apply(config, overrides, where, axes, entry=None) -> Config:
    """``config.replace(**overrides)``, its error saying where in the sweep.

    ``where`` names the point, or ``[set]``; for a point, the error names
    the axis or the ``[[points]]`` entry (index ``entry``) of a bad value.
    """
    try:
        return config.replace(**overrides)
    except ConfigError as err:
        problem = str(err).removeprefix(f"{config.source}: ")
    for key, value in overrides.items():
        table, _, name = key.partition(".")
        if where != "[set]" and problem.startswith(f"[{table}] {name} = "):
            origin = "[axes]" if key in axes else f"[[points]] entry {entry + 1}"
            where = f"{origin} {key!r} = {value!r} ({where.partition(' (')[0]})"
            if key in axes and "expected a list" in problem:
                problem += (
                    "; an axis lists one value per point, so a list-valued key "
                    "needs a list of lists, e.g. [[512, 256], [500, 500, 500]]"
                )
            break
    raise SweepError(f"{config.source}: {where}: {problem}")


# -- running ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SweepEvent:
    """What the ``on_event`` callback of :func:`run_sweep` receives.

    Attributes
    ----------
    kind : str
        ``"cluster"`` (the cluster is ready; ``message`` describes it),
        ``"skipped"`` (finished in an earlier run), ``"started"``,
        ``"retried"`` (started again, after its worker died or an unexpected
        error; ``message`` gives the attempt), ``"finished"``
        or ``"failed"`` (``message`` holds the error).
    point : str or None
        The point's name.
    total, done, running, failed : int
        Points in the sweep; those finished, failed or skipped; those
        started and not yet done; those failed.
    message : str
    record : dict or None
        With ``finished`` and ``failed``: what the point reported
        (``test_accuracy`` in percent, ``wall_time``, ``error``...).
    """

    kind: str
    point: str | None
    total: int
    done: int
    running: int
    failed: int
    message: str = ""
    record: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes
    ----------
    report : Report
        The results table, as written to the sweep folder.
    ran, skipped, failed : tuple of str
        Names of the points run now, skipped as finished before, and failed
        now.
    """

    report: "Report"
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_sweep(
    sweep: Sweep,
    *,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    on_event: Callable[[SweepEvent], None] | None = None,
) -> SweepResult:
    """Run every point of ``sweep`` not yet finished, one Dask task each.

    Parameters
    ----------
    sweep : Sweep
    client : distributed.Client, optional
        Run on this client's cluster; it is left open.
    scheduler : str, optional
        Address of a running Dask scheduler, e.g. ``tcp://host:8786``. Its
        workers need trlsim installed, the data (``TRLSIM_DATA``) and the
        sweep folder at the same paths.
    n_workers, threads_per_worker : int, optional
        Size of the local cluster started when neither ``client`` nor
        ``scheduler`` is given: by default one single-threaded worker process
        per core, at most one per point to run.
    on_event : callable, optional
        Receives a :class:`SweepEvent` as points start and end, always from
        the calling thread.

    Returns
    -------
    SweepResult

    Raises
    ------
    MissingDependency
        If dask or distributed is not installed.
    SweepError
        If the sweep folder holds a finished point of other settings.
    OSError
        If the folder cannot be written or the scheduler cannot be reached.

    Notes
    -----
    Each point's Numba threads are its worker's share of the cores: the
    host's cores divided by the threads of all workers on it, unless the
    sweep sets ``training.threads`` itself. A point whose worker dies runs
    again on another, at most ``sweep.retries`` more times (on a local
    cluster; an external scheduler applies its own
    ``distributed.scheduler.allowed-failures``). A point that raises is
    recorded in its ``error.json`` and the sweep goes on. Interrupting
    (Ctrl-C) cancels the points still running; finished ones are kept.
    """
    distributed = _import_distributed()
    if client is not None and scheduler is not None:
        raise ValueError("give either client or scheduler, not both")
    if (client is not None or scheduler is not None) and (
        n_workers is not None or threads_per_worker is not None
    ):
        raise ValueError(
            "n_workers and threads_per_worker size a local cluster; they cannot be "
            "used with a client or a scheduler address"
        )

    todo, skipped = _plan(sweep)
    try:
        sweep.out.mkdir(parents=True, exist_ok=True)
        _write_json(sweep.out / SWEEP_FILE, _description(sweep))
    except OSError as err:
        raise OSError(f"cannot write the sweep folder {sweep.out}: {err}") from err
    progress = _Progress(len(sweep.points), on_event)
    for point in skipped:
        progress.skip(point.name)

    failed = []
    if todo:
        with _cluster(
            distributed,
            sweep,
            client,
            scheduler,
            n_workers,
            threads_per_worker,
            len(todo),
        ) as (client, description):
            progress.emit("cluster", message=description)
            try:
                failed = _run_points(distributed, client, sweep, todo, progress)
            except KeyboardInterrupt:
                with contextlib.suppress(OSError, SweepError):
                    write_report(sweep.out)
                raise
    return SweepResult(
        report=write_report(sweep.out),
        ran=tuple(point.name for point in todo),
        skipped=tuple(point.name for point in skipped),
        failed=tuple(failed),
    )


def _import_distributed():
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as err:
        raise MissingDependency(
            f"running a sweep needs dask and distributed ({err.msg}); install them "
            "with: pip install 'trlsim[sweep]'"
        ) from None
    return distributed


def _plan(sweep: Sweep) -> tuple[list[Point], list[Point]]:
    """Split the points into those to run and those finished before."""
    todo, skipped = [], []
    for point in sweep.points:
        summary = _read_json(sweep.folder(point) / SUMMARY_FILE)
        if summary is None or summary.get("status") != "finished":
            todo.append(point)
            continue
        difference = _difference(summary.get("config", {}), point.config.to_dict())
        if difference:
            raise SweepError(
                f"{sweep.source}: point {point.name}: {sweep.folder(point)} holds a "
                f"finished run of other settings ({difference}); set [sweep] out to "
                "another folder, or delete that point's folder to run it again"
            )
        skipped.append(point)
    return todo, skipped


def _difference(done: Mapping, planned: Mapping) -> str | None:
    """The first key whose value differs, as text; None if none.

    Threads are not compared, nor keys that the earlier run's version of
    trlsim did not have.
    """
    planned = json.loads(json.dumps(planned))
    for table, keys in planned.items():
        for key, value in keys.items():
            earlier = done.get(table, {})
            if f"{table}.{key}" == THREADS_KEY or key not in earlier:
                continue
            before = earlier[key]
            if before != value:
                return f"[{table}] {key} = {before!r} there, {value!r} now"
    return None


def _description(sweep: Sweep) -> dict[str, Any]:
    return {
        "format": "trlsim-sweep",
        "format_version": 1,
        "name": sweep.name,
        "source": sweep.source,
        "base": sweep.base,
        "set": dict(sweep.fixed),
        "varied": list(sweep.varied),
        "group_by": list(sweep.group_keys),
        "points": [
            {"name": point.name, "settings": dict(point.settings)}
            for point in sweep.points
        ],
    }


@contextlib.contextmanager
def _cluster(distributed, sweep, client, scheduler, n_workers, threads, n_points):
    """Yield a client and a description of its cluster; close what it opened."""
    if client is not None:
        yield client, _describe_cluster(client)
        return
    if scheduler is not None:
        try:
            client = distributed.Client(
                scheduler, timeout=_CONNECT_SECONDS, set_as_default=False
            )
        except (OSError, ValueError) as err:
            raise OSError(
                f"cannot reach the Dask scheduler at {scheduler}: {err}"
            ) from err
        with client:
            yield client, _describe_cluster(client)
        return

    import dask

    cores = available_cores()
    threads = threads or 1
    n_workers = n_workers or max(1, min(n_points, cores // threads))
    if n_workers * threads > cores:
        logger.warning(
            "%d workers x %d threads is more than the %d cores here; points will "
            "compete for them",
            n_workers,
            threads,
            cores,
        )
    # The scheduler runs in this process and reads its settings when created.
    with dask.config.set({"distributed.scheduler.allowed-failures": sweep.retries}):
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with cluster, distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(n_workers)
        numba_threads = max(1, cores // (n_workers * threads))
        yield client, (
            f"{n_workers} local worker process{'es' if n_workers > 1 else ''} x "
            f"{threads} thread{'s' if threads > 1 else ''}, {numba_threads} Numba "
            f"thread{'s' if numba_threads > 1 else ''} per point"
        )


def _describe_cluster(client) -> str:
    workers = client.nthreads()
    return (
        f"the Dask scheduler at {client.scheduler.address} ({len(workers)} "
        f"workers, {sum(workers.values())} threads)"
    )


class _Progress:
    """Counts of the points and the events they give."""

    def __init__(self, total, callback):
        self.total = total
        self.callback = callback or (lambda event: None)
        self.done = self.failed = 0
        self.running: set[str] = set()
        self.ended: set[str] = set()

    def emit(self, kind, point=None, message="", record=None):
        self.callback(
            SweepEvent(
                kind,
                point,
                self.total,
                self.done,
                len(self.running),
                self.failed,
                message,
                record,
            )
        )

    def skip(self, point):
        self.done += 1
        self.emit("skipped", point, "finished in an earlier run")

    def start(self, point, worker, attempt):
        if point in self.ended:
            return
        self.running.add(point)
        if attempt == 1:
            self.emit("started", point, f"on {worker}")
        else:
            self.emit("retried", point, f"attempt {attempt}, on {worker}")

    def end(self, point, record):
        self.running.discard(point)
        self.ended.add(point)
        self.done += 1
        if record["status"] == "finished":
            self.emit("finished", point, record=record)
        else:
            self.failed += 1
            message = f"{record['error']}: {record['message']}"
            self.emit("failed", point, message, record)


def _run_points(distributed, client, sweep, todo, progress) -> list[str]:
    """Submit the points, report them as they go; return the failed ones."""
    run_id = uuid.uuid4().hex
    started = queue.SimpleQueue()

    def on_log(event):
        message = event[1]
        if isinstance(message, Mapping) and message.get("run") == run_id:
            started.put({key: message[key] for key in ("point", "worker", "attempt")})

    client.subscribe_topic(_EVENT_TOPIC, on_log)
    threads_by_host = _threads_by_host(distributed, client)
    keep_threads = THREADS_KEY in sweep.fixed or any(
        THREADS_KEY in point.settings for point in sweep.points
    )
    futures = {}
    for point in todo:
        future = client.submit(
            _run_point,
            point.config,
            str(sweep.folder(point)),
            point.name,
            run_id,
            threads_by_host,
            keep_threads,
            key=f"trlsim-sweep-{point.name}-{run_id[:8]}",
            pure=False,
            retries=sweep.retries,
        )
        futures[future] = point
    completed = distributed.as_completed(list(futures), loop=client.loop)
    failed = []
    try:
        remaining = len(futures)
        while remaining:
            batch = completed.next_batch(block=False)
            starts = []
            while not started.empty():
                starts.append(started.get())
            # Between two polls, a point may start and end, and a worker's next
            # point start after its last one ended: report in that order.
            ending = {futures[future].name for future in batch}
            for message in starts:
                if message["point"] in ending:
                    progress.start(**message)
            for future in batch:
                point = futures[future]
                record = _outcome(distributed, future, point, sweep)
                if record["status"] != "finished":
                    failed.append(point.name)
                progress.end(point.name, record)
                remaining -= 1
            for message in starts:
                if message["point"] not in ending:
                    progress.start(**message)
            if not batch:
                time.sleep(_POLL_SECONDS)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        client.unsubscribe_topic(_EVENT_TOPIC)
    return failed


def _threads_by_host(distributed, client) -> dict[str, int]:
    """Threads of all workers on each host, as the cluster stands now."""
    totals: dict[str, int] = {}
    for address, n_threads in client.nthreads().items():
        host = distributed.comm.get_address_host(address)
        totals[host] = totals.get(host, 0) + n_threads
    return totals


def _outcome(distributed, future, point, sweep) -> dict[str, Any]:
    """The record of a completed future; a failure is also written to disk."""
    if future.status == "finished":
        return future.result()
    if future.status == "error":
        error = future.exception()
        if isinstance(error, distributed.KilledWorker):
            message = (
                f"its worker died {sweep.retries + 1} times while running it "
                "(out of memory, or killed?)"
            )
        else:
            message = str(error)
        record = _failure(point.name, type(error).__name__, message, None)
        tb = future.traceback()
        if tb is not None:
            record["traceback"] = "".join(traceback.format_tb(tb))
    else:
        record = _failure(point.name, "Cancelled", "the task was cancelled", None)
    record["settings"] = dict(point.settings)
    with contextlib.suppress(OSError):
        sweep.folder(point).mkdir(parents=True, exist_ok=True)
        _write_json(sweep.folder(point) / ERROR_FILE, record)
    return record


def _failure(point, error, message, worker) -> dict[str, Any]:
    return {
        "point": point,
        "status": "failed",
        "error": error,
        "message": message,
        "worker": worker,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def _run_point(config, folder, name, run_id, threads_by_host, keep_threads):
    """Run one point on a Dask worker; return the record the client keeps.

    Unless ``keep_threads`` (the sweep sets ``training.threads`` itself), the
    point gets its worker's share of the host's cores.
    """
    worker = _current_worker()
    address = worker.address if worker is not None else socket.gethostname()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ERROR_FILE).unlink(missing_ok=True)

    # Counted on disk: the start message of an attempt whose worker was killed
    # may never have left it.
    earlier = _read_json(folder / ATTEMPT_FILE) or {}
    attempt = earlier.get("attempt", 0) + 1 if earlier.get("run") == run_id else 1
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    _write_json(
        folder / ATTEMPT_FILE,
        {"run": run_id, "attempt": attempt, "worker": address, "started": started},
    )
    if worker is not None:
        message = {"run": run_id, "point": name, "worker": address}
        worker.log_event(_EVENT_TOPIC, {**message, "attempt": attempt})
    try:
        if not keep_threads:
            threads = _share_of_cores(worker, threads_by_host)
            config = config.replace(**{THREADS_KEY: threads})
        summary = run(config, out=folder, overwrite=True)
    except _POINT_ERRORS as err:
        record = _failure(name, type(err).__name__, str(err), address)
        record["traceback"] = traceback.format_exc()
        _write_json(folder / ERROR_FILE, record)
        return record
    if summary["status"] != "finished":
        record = _failure(name, "Interrupted", summary.get("note", ""), address)
        _write_json(folder / ERROR_FILE, record)
        return record
    result = _point_result(name, {}, summary, None)
    return {
        "point": name,
        "status": "finished",
        "worker": address,
        "threads": summary["machine"]["threads"],
        "test_accuracy": result.test_accuracy,
        "baseline_accuracy": result.baseline_accuracy,
        "wall_time": result.wall_time,
    }


def _current_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _share_of_cores(worker, threads_by_host) -> int:
    import numba

    busy = 1
    if worker is not None:
        from distributed.comm import get_address_host

        host = get_address_host(worker.address)
        busy = threads_by_host.get(host) or getattr(worker.state, "nthreads", 1)
    share = available_cores() // max(busy, 1)
    return max(1, min(share, numba.config.NUMBA_NUM_THREADS))


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a partial file never replaces a complete one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- the results table --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PointResult:
    """The outcome of one point, as read from its folder.

    Attributes
    ----------
    name : str
    settings : dict
        The dotted keys it sets, beyond ``[set]``.
    status : str
        ``"finished"``, ``"failed"`` or ``"missing"`` (not run yet, running or
        interrupted).
    test_accuracy, baseline_accuracy : float or None
        Probe test accuracy in percent of the trained and of the untrained
        network.
    wall_time : float or None
        Seconds of training and both probes.
    error : str or None
        Why it failed: the error's type and message.
    """

    name: str
    settings: Mapping[str, Any]
    status: str
    test_accuracy: float | None = None
    baseline_accuracy: float | None = None
    wall_time: float | None = None
    error: str | None = None


def _point_result(name, settings, summary, error) -> PointResult:
    if summary is not None and summary.get("status") == "finished":

        def percent(probe):
            return 100 * probe["test_accuracy"] if probe else None

        probe, baseline = summary.get("probe"), summary.get("baseline_probe")
        parts = [summary.get("training"), probe, baseline]
        wall = sum(part.get("wall_time", 0.0) for part in parts if part)
        return PointResult(
            name, settings, "finished", percent(probe), percent(baseline), wall
        )
    if error is not None:
        text = f"{error.get('error', 'Error')}: {error.get('message', '')}"
        return PointResult(name, settings, "failed", error=text)
    return PointResult(name, settings, "missing")


@dataclasses.dataclass(frozen=True)
class Report:
    """The results table of a sweep folder.

    Attributes
    ----------
    folder : Path
    name : str
    group_keys : tuple of str
        The varied keys but the seed; one row per combination of them.
    rows : tuple of dict
        One per group, in sweep order: ``settings`` (group key to value),
        ``n`` (finished points), ``failed``, ``missing``,
        ``test_mean``/``test_std`` (probe test accuracy in percent; the
        sample standard deviation, None under two values), ``baseline_mean``
        (the untrained network) and ``wall_time_mean`` (seconds).
    points : tuple of PointResult
    markdown : str
        The table as ``results.md`` holds it.
    """

    folder: Path
    name: str
    group_keys: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]
    points: tuple[PointResult, ...]
    markdown: str

    @property
    def failed(self) -> tuple[PointResult, ...]:
        """The points that failed."""
        return tuple(point for point in self.points if point.status == "failed")

    def to_csv(self) -> str:
        """The long-format table as CSV, one row per group."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*self.group_keys, *_CSV_COLUMNS.values()])
        for row in self.rows:
            values = [_csv_value(row["settings"].get(k)) for k in self.group_keys]
            values += [_csv_value(row[column]) for column in _CSV_COLUMNS]
            writer.writerow(values)
        return buffer.getvalue()


_CSV_COLUMNS = {
    "n": "n",
    "failed": "failed",
    "missing": "missing",
    "test_mean": "test_accuracy_pct_mean",
    "test_std": "test_accuracy_pct_std",
    "baseline_mean": "untrained_accuracy_pct_mean",
    "wall_time_mean": "wall_time_s_mean",
}


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, Mapping)):
        return json.dumps(value)
    return value


def build_report(folder: str | os.PathLike) -> Report:
    """Read a sweep folder's points and tabulate them.

    Parameters
    ----------
    folder : str or Path
        A folder :func:`run_sweep` wrote (it holds ``sweep.json``).

    Returns
    -------
    Report

    Raises
    ------
    SweepError
        If the folder holds no readable ``sweep.json``.
    """
    folder = Path(folder)
    description = _read_json(folder / SWEEP_FILE)
    if not isinstance(description, Mapping) or "points" not in description:
        state = "is not a directory" if not folder.is_dir() else "holds no sweep"
        raise SweepError(
            f"{folder}: {state} ({SWEEP_FILE} missing or unreadable); give the "
            "folder a sweep wrote, its [sweep] out"
        )
    points = tuple(
        _point_result(
            entry["name"],
            entry.get("settings", {}),
            _read_json(folder / entry["name"] / SUMMARY_FILE),
            _read_json(folder / entry["name"] / ERROR_FILE),
        )
        for entry in description["points"]
    )
    group_keys = tuple(description.get("group_by", ()))
    rows = _group(points, group_keys)
    name = description.get("name", folder.name)
    markdown = _markdown(name, group_keys, rows, points)
    return Report(folder, name, group_keys, tuple(rows), points, markdown)


def write_report(folder: str | os.PathLike) -> Report:
    """Tabulate a sweep folder and write ``results.csv``, ``results.md`` and
    ``failed.json`` (the failed points and their errors) into it.

    Parameters
    ----------
    folder : str or Path

    Returns
    -------
    Report
    """
    report = build_report(folder)
    folder = Path(folder)
    (folder / RESULTS_CSV).write_text(report.to_csv())
    (folder / RESULTS_MD).write_text(report.markdown)
    failed = [
        {"point": p.name, "settings": dict(p.settings), "error": p.error}
        for p in report.failed
    ]
    _write_json(folder / FAILED_FILE, failed)
    return report


def _group(points, group_keys) -> list[dict[str, Any]]:
    groups: dict[Any, list[PointResult]] = {}
    for point in points:
        key = _freeze([point.settings.get(k) for k in group_keys])
        groups.setdefault(key, []).append(point)
    rows = []
    for members in groups.values():
        finished = [p for p in members if p.status == "finished"]
        tests = [p.test_accuracy for p in finished if p.test_accuracy is not None]
        baselines = [
            p.baseline_accuracy for p in finished if p.baseline_accuracy is not None
        ]
        walls = [p.wall_time for p in finished if p.wall_time is not None]
        rows.append(
            {
                "settings": {k: members[0].settings.get(k) for k in group_keys},
                "n": len(finished),
                "failed": sum(p.status == "failed" for p in members),
                "missing": sum(p.status == "missing" for p in members),
                "test_mean": statistics.fmean(tests) if tests else None,
                "test_std": statistics.stdev(tests) if len(tests) > 1 else None,
                "test_values": tests,
                "baseline_mean": statistics.fmean(baselines) if baselines else None,
                "baseline_values": baselines,
                "wall_time_mean": statistics.fmean(walls) if walls else None,
                "wall_values": walls,
            }
        )
    return rows


def _show(value: Any) -> str:
    """A setting as a table cell: lists as ``512, 256``."""
    if value is None:
        return "(base)"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(_show, value)) or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _percent(mean, std=None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _counts(n, failed, missing) -> str:
    extra = [f"{failed} failed"] * bool(failed) + [f"{missing} missing"] * bool(missing)
    return f"({', '.join([str(n), *extra])})"


def _headers(keys) -> list[str]:
    short = [key.partition(".")[2] for key in keys]
    return [s if short.count(s) == 1 else k for k, s in zip(keys, short)]


def _markdown_table(header, lines) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

    def render(row):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [render(header), rule, *map(render, lines)]


def _markdown(name, group_keys, rows, points) -> str:
    n_done = sum(p.status == "finished" for p in points)
    n_failed = sum(p.status == "failed" for p in points)
    lines = [
        f"# Sweep {name}",
        "",
        f"{len(points)} points: {n_done} finished, {n_failed} failed, "
        f"{len(points) - n_done - n_failed} missing.",
        "Probe test accuracy in %: mean ± sample standard deviation over seeds "
        "(finished points); untrained: the same network and probe before "
        "training; wall: seconds of training and probing per point.",
        "",
    ]
    if RULE_KEY in group_keys:
        lines += _pivot(group_keys, rows) + [""]
    header = [*_headers(group_keys), "test %", "n", "untrained %", "wall s"]
    header += ["failed", "missing"]
    table = []
    for row in rows:
        cells = [_show(row["settings"][k]) for k in group_keys]
        cells += [
            _percent(row["test_mean"], row["test_std"]),
            str(row["n"]),
            _percent(row["baseline_mean"]),
            "-" if row["wall_time_mean"] is None else f"{row['wall_time_mean']:.1f}",
            str(row["failed"]),
            str(row["missing"]),
        ]
        table.append(cells)
    lines += _markdown_table(header, table)
    failed = [p for p in points if p.status == "failed"]
    if failed:
        lines += ["", "Failed points:", ""]
        for point in failed:
            first = (point.error or "").splitlines()[0] if point.error else ""
            lines.append(f"- {point.name}: {first}")
    return "\n".join(lines) + "\n"


def _pivot(group_keys, rows) -> list[str]:
    """The paper's layout: a row per other setting, a column per rule."""
    others = [key for key in group_keys if key != RULE_KEY]
    rules = list(dict.fromkeys(row["settings"][RULE_KEY] for row in rows))
    table: dict[Any, dict[str, Any]] = {}
    for row in rows:
        key = _freeze([row["settings"][k] for k in others])
        entry = table.setdefault(key, {"settings": row["settings"], "rules": {}})
        entry["rules"][row["settings"][RULE_KEY]] = row
    header = [*_headers(others), *(_show(rule).upper() for rule in rules)]
    header += ["untrained %", "wall s"]
    lines = []
    for entry in table.values():
        cells = [_show(entry["settings"][k]) for k in others]
        baselines, walls = [], []
        for rule in rules:
            row = entry["rules"].get(rule)
            if row is None:
                cells.append("")
                continue
            counts = _counts(row["n"], row["failed"], row["missing"])
            cells.append(f"{_percent(row['test_mean'], row['test_std'])} {counts}")
            baselines += row["baseline_values"]
            walls += row["wall_values"]
        cells.append(_percent(statistics.fmean(baselines) if baselines else None))
        cells.append(f"{statistics.fmean(walls):.1f}" if walls else "-")
        lines.append(cells)
    return _markdown_table(header, lines)
