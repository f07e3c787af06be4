"""Typed, validated run settings, read from TOML.

A run is described by nine tables, ``[network]``, ``[rule]``, ``[optimizer]``,
``[data]``, ``[training]``, ``[probe]``, ``[output]``, ``[record]`` and
``[online]``, each parsed into a
frozen dataclass. Every key is declared once, as a dataclass field whose
metadata holds its kind, its valid values and its description. Validation, the
class docstrings and :func:`reference_markdown` all read that metadata, so the
checks and the documentation cannot drift apart.

Examples
--------
>>> config = parse_config({"rule": {"rule": "trl"}, "training": {"epochs": 3}})
>>> config.rule.c_var, config.training.schedule, config.probe.epochs
(5.0, 'greedy', 3)
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import os
import textwrap
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

CUDA_BLOCK_SIZE = 128
"""Threads per block of the CUDA kernels; grid-stride loops cover any size."""

RULE_DEFAULTS = {
    "trl": {"c_var": 5.0, "schedule": "greedy"},
    "trl-s": {"c_var": 2.5, "schedule": "concurrent"},
}
"""Values the paper used where the two rules differ (spec section 3)."""


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type or out of range.

    The message names the source (a file path, or ``Network()``), the table, the
    key, the offending value and what would be valid.
    """


class _Invalid(Exception):
    """A value failed a check; the caller adds where the value came from."""


class _Valid(NamedTuple):
    text: str
    test: Callable[[Any], bool]


def _at_least(low: int) -> _Valid:
    return _Valid(f">= {low}", lambda x: x >= low)


def _one_of(*choices: str) -> _Valid:
    return _Valid("one of " + ", ".join(map(repr, choices)), choices.__contains__)


_POSITIVE = _Valid("> 0", lambda x: x > 0)
_FRACTION = _Valid("in [0, 1)", lambda x: 0 <= x < 1)
_NONNEG = _at_least(0)


class _Spec(NamedTuple):
    kind: str
    doc: str
    valid: _Valid | None


def _key(default: Any, kind: str, doc: str, valid: _Valid | None = None) -> Any:
    """Declare one setting: a dataclass field carrying its :class:`_Spec`."""
    spec = _Spec(kind, doc, valid)
    return dataclasses.field(default=default, metadata={"spec": spec})


def _typed(types: tuple[type, ...], noun: str, cast: Callable = lambda v: v):
    """Return a converter that accepts instances of ``types`` only."""

    def convert(value: Any) -> Any:
        # bool is an Integral, but TOML `true` is not the number 1.
        if not isinstance(value, types) or (
            isinstance(value, bool) and bool not in types
        ):
            raise _Invalid(f"expected {noun}, got {type(value).__name__}")
        return cast(value)

    return convert


_as_int = _typed((numbers.Integral,), "an integer", int)
_as_float = _typed((numbers.Real,), "a number", float)


def _list_of(item: Callable, length: int | None = None, min_length: int = 0):
    """Return a converter from a list to a tuple of converted items."""

    def convert(value: Any) -> tuple:
        # Python callers may pass any sequence, a NumPy array included.
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
            raise _Invalid(f"expected a list, got {type(value).__name__}")
        if length is not None and len(value) != length:
            raise _Invalid(f"expected {length} values, got {len(value)}")
        if len(value) < min_length:
            raise _Invalid(f"expected at least {min_length} value")
        return tuple(item(v) for v in value)

    return convert


def _as_layers(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, str) and value == "all":
        return None
    if isinstance(value, str):
        raise _Invalid('expected "all" or a list of layer indices')
    layers = _list_of(_as_int)(value)
    if len(set(layers)) != len(layers):
        raise _Invalid("a layer index appears twice")
    return layers


def _as_neurons(value: Any) -> int | tuple[int, ...] | None:
    if isinstance(value, str) and value == "all":
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        raise _Invalid('expected "all", a count or a list of neuron indices')
    return _list_of(_as_int, min_length=1)(value)


# Each kind: the converter from a TOML (or Python) value, and its TOML type.
_KINDS = {
    "int": (_as_int, "integer"),
    "float": (_as_float, "float"),
    "bool": (_typed((bool,), "true or false"), "boolean"),
    "str": (_typed((str,), "a string"), "string"),
    "path": (_typed((str, os.PathLike), "a path string", os.fspath), "string"),
    "sizes": (_list_of(_as_int, min_length=1), "array of integers"),
    "pair": (_list_of(_as_float, length=2), "array of 2 floats"),
    "layers": (_as_layers, '"all" or array of integers'),
    "names": (_list_of(_typed((str,), "a string")), "array of strings"),
    "neurons": (_as_neurons, '"all", an integer or array of integers'),
}


def _convert(spec: _Spec, value: Any) -> Any:
    """Convert ``value`` to the kind of ``spec`` and check (each of) it."""
    value = _KINDS[spec.kind][0](value)
    items = value if isinstance(value, tuple) else () if value is None else (value,)
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise _Invalid("must be a finite number")
        if spec.valid and not spec.valid.test(item):
            each = "each value " if isinstance(value, tuple) else ""
            raise _Invalid(f"{each}must be {spec.valid.text}")
    return value


def _documented(cls: type) -> type:
    """Append a numpydoc Attributes section built from the field metadata."""
    lines = [inspect.cleandoc(cls.__doc__), "", "Attributes", "----------"]
    for field in dataclasses.fields(cls):
        spec = field.metadata["spec"]
        lines.append(f"{field.name} : {field.type}, default {field.default!r}")
        text = spec.doc + (f" Valid: {spec.valid.text}." if spec.valid else "")
        lines += textwrap.wrap(
            text, 84, initial_indent=" " * 4, subsequent_indent=" " * 4
        )
    cls.__doc__ = "\n".join(lines) + "\n"
    return cls


ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")


@_documented
@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Shape of the encoder, the ``[network]`` table."""

    hidden: tuple[int, ...] = _key(
        (512, 256),
        "sizes",
        "Hidden layer sizes, input side first; at least one.",
        _at_least(1),
    )
    activation: str = _key(
        "relu", "str", "Nonlinearity of the hidden layers.", _one_of(*ACTIVATIONS)
    )


@_documented
@dataclasses.dataclass(frozen=True)
class RuleConfig:
    """The learning rule and its loss weights, the ``[rule]`` table."""

    rule: str = _key(
        "trl-s",
        "str",
        "'trl': pairs inside a chunk, gradient to both members; 'trl-s': pairs "
        "across the batch, previous activation detached.",
        _one_of(*RULE_DEFAULTS),
    )
    c_sim: float = _key(1.0, "float", "Weight of the invariance term.", _NONNEG)
    c_var: float | None = _key(
        None,
        "float",
        "Weight of the variance hinge; unset: 5.0 for trl, 2.5 for trl-s.",
        _NONNEG,
    )
    c_cov: float = _key(1.0, "float", "Weight of the decorrelation term.", _NONNEG)
    c_lat: float = _key(1.2, "float", "Weight of the lateral term.", _NONNEG)
    tau: float = _key(1.0, "float", "Minimum variance of a neuron.", _NONNEG)
    cov_sparsity: float = _key(
        0.0, "float", "Share of lateral targets masked out at random.", _FRACTION
    )
    lateral: str = _key(
        "matrix",
        "str",
        "'matrix': learned lateral matrix; 'direct': direct covariance penalty "
        "(spec section 8).",
        _one_of("matrix", "direct"),
    )
    lateral_learning_rate: float | None = _key(
        None,
        "float",
        "Learning rate of L; unset: [optimizer] learning_rate.",
        _POSITIVE,
    )
    var_momentum: float = _key(
        0.9, "float", "Momentum of the running variance.", _FRACTION
    )


@_documented
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer of W, b and L, the ``[optimizer]`` table."""

    optimizer: str = _key("adam", "str", "Update rule.", _one_of("adam", "sgd"))
    learning_rate: float = _key(1e-4, "float", "Step size.", _POSITIVE)
    betas: tuple[float, float] = _key(
        (0.9, 0.999), "pair", "Adam moment decay rates.", _FRACTION
    )
    eps: float = _key(1e-8, "float", "Adam denominator offset.", _POSITIVE)
    momentum: float = _key(0.9, "float", "SGD momentum (sgd only).", _FRACTION)
    weight_decay: float = _key(0.0, "float", "L2 penalty on weights.", _NONNEG)


@_documented
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset and stream order (spec section 4), the ``[data]`` table."""

    dataset: str = _key(
        "mnist", "str", "Dataset.", _one_of("mnist", "fashion-mnist", "digits")
    )
    path: str | None = _key(
        None,
        "path",
        "Existing folder of the IDX files; relative to the config file's folder, "
        "stored absolute.",
    )
    batch_size: int = _key(
        64, "int", "Rows per minibatch; for trl a multiple of chunk_size.", _at_least(2)
    )
    chunk_size: int = _key(
        16, "int", "Same-class samples per chunk; for trl at least 2.", _at_least(1)
    )
    coherence: float = _key(
        1.0,
        "float",
        "1: chunked order kept; 0: nearly random.",
        _Valid("in [0, 1]", lambda x: 0 <= x <= 1),
    )
    order: str = _key(
        "chunked",
        "str",
        "Order of the training stream: label-chunked, file order, shuffled, or "
        "a stream of frames in which each image drifts, rotates, scales or all "
        "three slowly (no label used; MNIST-format datasets only).",
        _one_of("chunked", "natural", "shuffled", "drift", "rotate", "scale", "mixed"),
    )
    frames: int = _key(
        10, "int", "Frames per image in the drift/rotate/scale/mixed orders.",
        _at_least(2),
    )
    segments: int | None = _key(
        None,
        "int",
        "Images shown per epoch in those orders; unset: every training image.",
        _at_least(1),
    )
    train_limit: int | None = _key(
        None, "int", "Use the first N training samples (N >= batch_size).", _at_least(1)
    )
    test_limit: int | None = _key(
        None, "int", "Use the first N test samples.", _at_least(1)
    )


@_documented
@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Length and schedule of training, the ``[training]`` table."""

    epochs: int = _key(60, "int", "Epochs (per layer when greedy).", _at_least(1))
    schedule: str = _key(
        "auto",
        "str",
        "'greedy': one layer after another, earlier ones frozen; 'concurrent': all "
        "layers every step; 'auto': greedy for trl, concurrent for trl-s.",
        _one_of("auto", "greedy", "concurrent"),
    )
    train_layers: tuple[int, ...] | None = _key(
        None,
        "layers",
        "Hidden layers that learn (0-based, < len(hidden)); the others keep their "
        'initial weights. [] trains none, "all" every one.',
        _NONNEG,
    )
    seed: int = _key(0, "int", "Seed of every random draw.", _NONNEG)
    threads: int | None = _key(
        None, "int", "CPU threads; unset: numba's.", _at_least(1)
    )
    backend: str = _key(
        "auto", "str", "Where kernels run.", _one_of("auto", "cpu", "cuda")
    )


@_documented
@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Linear probe on the frozen encoder (spec section 5), ``[probe]``."""

    enabled: bool = _key(True, "bool", "Probe the encoder after training.")
    epochs: int | None = _key(
        None, "int", "Epochs; unset: training epochs.", _at_least(1)
    )
    learning_rate: float = _key(1e-4, "float", "Adam step size.", _POSITIVE)
    batch_size: int = _key(64, "int", "Minibatch size.", _at_least(1))
    layers: tuple[int, ...] | None = _key(
        None, "layers", "Hidden layers it reads (0-based, < len(hidden)).", _NONNEG
    )
    baseline: bool = _key(
        True, "bool", "Also probe the untrained network, same seed and budget."
    )


@_documented
@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where results go, the ``[output]`` table."""

    dir: str | None = _key(
        None,
        "path",
        "Run folder, relative to the working directory at run time; unset: runs/ "
        "plus the config file stem.",
    )


@_documented
@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """One sample per step, memory units as leaky integrators (spec section 7),
    the ``[online]`` table."""

    online: bool = _key(
        False,
        "bool",
        "Learn from one sample at a time; needs rule 'trl-s' (each sample pairs "
        "with the stored previous activation, detached). The running variance "
        "uses [rule] var_momentum: 0.99 suits online learning.",
    )
    mean_momentum: float = _key(
        0.99, "float", "Momentum of the running mean.", _FRACTION
    )
    cov_momentum: float = _key(
        0.99,
        "float",
        "Momentum of the leaky covariance estimate (lateral_rule 'gradient').",
        _FRACTION,
    )
    lateral_rule: str = _key(
        "gradient",
        "str",
        "'gradient': L descends its loss against a leaky covariance estimate; "
        "'hebbian': L[j,k] moves toward zc_j zc_k at the lateral learning rate.",
        _one_of("gradient", "hebbian"),
    )
    shifted_lateral: bool = _key(
        False,
        "bool",
        "The lateral pass uses the previous sample's activity, so no neuron "
        "waits for the others (spec section 8).",
    )
    segment_starts: str = _key(
        "ignore",
        "str",
        "'skip': no invariance term where the stream says a segment begins; "
        "'ignore': pair every sample with the one before.",
        _one_of("ignore", "skip"),
    )
    block: int = _key(
        1000,
        "int",
        "Samples per compiled call (progress, recording and Ctrl-C act between "
        "blocks).",
        _at_least(1),
    )


TRANSFORM_ORDERS = ("drift", "rotate", "scale", "mixed")

RECORD_FIELDS = (
    "mean", "var", "prev", "losses", "weights", "bias", "lateral", "activations"
)


@_documented
@dataclasses.dataclass(frozen=True)
class RecordConfig:
    """What the HDF5 trace of a run holds, the ``[record]`` table."""

    enabled: bool = _key(False, "bool", "Write an HDF5 trace while the run goes.")
    file: str | None = _key(
        None, "path", "Trace file, relative to the run folder; unset: trace.h5."
    )
    fields: tuple[str, ...] = _key(
        ("mean", "var", "prev", "losses"),
        "names",
        "What to sample: memory units, loss terms, weights, bias, lateral "
        "matrices, activations on the probe set.",
        _one_of(*RECORD_FIELDS),
    )
    every: int = _key(
        10, "int", "Steps between samples of memory units and losses.", _at_least(1)
    )
    weights_every: int | None = _key(
        None,
        "int",
        "Steps between samples of weights, bias and lateral; unset: once an epoch.",
        _at_least(1),
    )
    activations_every: int | None = _key(
        None,
        "int",
        "Steps between samples of probe-set activations; unset: once an epoch.",
        _at_least(1),
    )
    layers: tuple[int, ...] | None = _key(
        None, "layers", "Hidden layers to record (0-based).", _NONNEG
    )
    neurons: int | tuple[int, ...] | None = _key(
        None,
        "neurons",
        "Neurons of each recorded layer: \"all\", the first N, or a list.",
        _NONNEG,
    )
    probe_samples: int = _key(
        500, "int", "Test images whose activations are recorded.", _at_least(1)
    )
    compression: str = _key(
        "none", "str", "Dataset compression.", _one_of("none", "gzip")
    )
    flush_seconds: float = _key(
        5.0, "float", "Longest wait between writes to disk.", _POSITIVE
    )
    snapshot_every: int = _key(
        10,
        "int",
        "Epochs between full snapshots (one is always taken at the end).",
        _at_least(1),
    )


_TABLES: dict[str, type] = {
    "network": NetworkConfig,
    "rule": RuleConfig,
    "optimizer": OptimizerConfig,
    "data": DataConfig,
    "training": TrainingConfig,
    "probe": ProbeConfig,
    "output": OutputConfig,
    "record": RecordConfig,
    "online": OnlineConfig,
}


def _keys(table: str) -> list[str]:
    return [field.name for field in dataclasses.fields(_TABLES[table])]


def _build_key_table() -> dict[str, str]:
    pairs = [
        (key, t) for t in ("network", "rule", "optimizer", "online") for key in _keys(t)
    ]
    pairs += [("chunk_size", "data"), ("batch_size", "data"), ("seed", "training")]
    pairs += [("train_layers", "training"), ("backend", "training")]
    table = dict(pairs)
    assert len(table) == len(pairs), "Network() keywords must be unique"
    return table


KEY_TABLE: dict[str, str] = _build_key_table()
"""Table of each key that :func:`settings_to_config` accepts as a keyword."""


def _unknown(where: str, what: str, name: str, valid: list[str]) -> ConfigError:
    """Error for an unknown name, suggesting the closest valid one."""
    quote = (lambda n: f"[{n}]") if what == "table" else (lambda n: f"'{n}'")
    message = f"{where} unknown {what} {quote(name)}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    homes = ", ".join(f"[{t}]" for t in _TABLES if name in _keys(t))
    if homes:
        message += f"; '{name}' is a key of {homes}."
    elif close:
        message += f"; did you mean {quote(close[0])}?"
    else:
        message += "."
    return ConfigError(f"{message} Valid {what}s: {', '.join(valid)}")


def _parse_table(name: str, given: Mapping[str, Any], source: str) -> Any:
    """Convert and range-check the keys of one table, filling in defaults."""
    cls = _TABLES[name]
    for key in given:
        if key not in _keys(name):
            raise _unknown(f"{source}: [{name}]", "key", key, _keys(name))

    values = {}
    for field in dataclasses.fields(cls):
        value = given.get(field.name)
        # None means "unset" where the default is unset; TOML itself has no None.
        if field.name not in given or (value is None and field.default is None):
            continue
        spec = field.metadata["spec"]
        try:
            values[field.name] = _convert(spec, value)
        except _Invalid as err:
            problem = f"[{name}] {field.name} = {value!r}: {err}"
            raise ConfigError(f"{source}: {problem}") from None
    return cls(**values)


def _resolve(
    tables: dict[str, Any], source: str, base_dir: str | Path | None
) -> dict[str, Any]:
    """Run the checks that span keys and fill in rule-dependent defaults."""

    def fail(table: str, key: str, problem: str) -> ConfigError:
        value = getattr(tables[table], key)
        value = list(value) if isinstance(value, tuple) else value
        return ConfigError(f"{source}: [{table}] {key} = {value!r}: {problem}")

    rule, data = tables["rule"], tables["data"]
    if tables["online"].online and rule.rule != "trl-s":
        raise fail(
            "rule",
            "rule",
            "online learning pairs each sample with the stored previous "
            "activation, detached: use rule = 'trl-s'",
        )
    if rule.rule == "trl" and data.chunk_size < 2:
        raise fail("data", "chunk_size", "must be >= 2 for rule 'trl'")
    if rule.rule == "trl" and data.batch_size % data.chunk_size:
        raise fail(
            "data",
            "batch_size",
            f"must be a multiple of chunk_size ({data.chunk_size}) for rule 'trl'",
        )
    if data.order in TRANSFORM_ORDERS and data.dataset == "digits":
        raise fail(
            "data",
            "order",
            "moving-image orders need an MNIST-format dataset (mnist or "
            "fashion-mnist), not the 8x8 digits",
        )
    if data.train_limit is not None and data.train_limit < data.batch_size:
        raise fail("data", "train_limit", f"must be >= batch_size ({data.batch_size})")

    n_hidden = len(tables["network"].hidden)
    for table, key in (
        ("training", "train_layers"),
        ("probe", "layers"),
        ("record", "layers"),
    ):
        for index in getattr(tables[table], key) or ():
            if index >= n_hidden:
                problem = f"layer {index} out of range; [network] hidden has "
                raise fail(
                    table, key, problem + f"{n_hidden} layers (0 to {n_hidden - 1})"
                )

    if tables["probe"].layers == ():
        raise fail("probe", "layers", 'must name at least one layer, or "all"')
    record = tables["record"]
    if record.layers == ():
        raise fail("record", "layers", 'must name at least one layer, or "all"')
    if isinstance(record.neurons, tuple):
        recorded = record.layers if record.layers is not None else range(n_hidden)
        smallest = min(tables["network"].hidden[i] for i in recorded)
        if max(record.neurons) >= smallest:
            raise fail(
                "record",
                "neurons",
                f"neuron indices must be < {smallest}, the size of the smallest "
                "recorded layer",
            )

    if data.path is not None:
        path = Path(base_dir or ".", Path(data.path).expanduser()).resolve()
        if not path.is_dir():
            state = "is not a directory" if path.exists() else "does not exist"
            raise fail("data", "path", f"{path} {state}")
        tables["data"] = dataclasses.replace(data, path=str(path))

    # Keys whose default depends on other keys: table, key, unset marker, value.
    defaults = RULE_DEFAULTS[rule.rule]
    derived = [
        ("rule", "c_var", None, defaults["c_var"]),
        ("rule", "lateral_learning_rate", None, tables["optimizer"].learning_rate),
        ("training", "schedule", "auto", defaults["schedule"]),
        ("probe", "epochs", None, tables["training"].epochs),
    ]
    for table, key, unset, value in derived:
        if getattr(tables[table], key) == unset:
            tables[table] = dataclasses.replace(tables[table], **{key: value})
    return tables


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of one run, validated, with rule-dependent defaults resolved.

    Build it with :func:`load_config`, :func:`parse_config` or
    :func:`settings_to_config`; constructing it directly skips every check.

    Attributes
    ----------
    network, rule, optimizer, data, training, probe, output, record, online
        One dataclass per TOML table; see :func:`reference_markdown`.
    source : str
        Where the settings came from: a file path, ``"Network()"`` or
        ``"<defaults>"``. Error messages start with it.
    text : str
        The TOML text as read, kept for provenance; empty if not from a file.
    given : dict or None
        The settings as given (tables of keys), before defaults and resolution,
        with ``data.path`` made absolute. :meth:`replace` starts from it, so a
        rule-dependent default follows a changed rule.
    """

    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    rule: RuleConfig = dataclasses.field(default_factory=RuleConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    record: RecordConfig = dataclasses.field(default_factory=RecordConfig)
    online: OnlineConfig = dataclasses.field(default_factory=OnlineConfig)
    source: str = "<defaults>"
    text: str = dataclasses.field(default="", repr=False)
    given: Mapping[str, Mapping[str, Any]] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the resolved settings as nested plain, JSON-able values.

        Tuples become lists; the result can be given back to :func:`parse_config`.
        """
        return {
            name: {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(getattr(self, name)).items()
            }
            for name in _TABLES
        }

    def replace(self, **overrides: Any) -> Config:
        """Return a new validated config with some keys changed.

        Parameters
        ----------
        **overrides
            Dotted ``"table.key"`` names and their new values, passed as
            ``config.replace(**{"training.epochs": 3})``. ``None`` unsets a key
            whose default is unset. A relative ``data.path`` is taken from the
            current working directory.

        Raises
        ------
        ConfigError
            If a name is not ``table.key`` or a value is invalid.
        """
        given = self.to_dict() if self.given is None else self.given
        given = {table: dict(keys) for table, keys in given.items()}
        for dotted, value in overrides.items():
            table, dot, key = dotted.partition(".")
            if not dot:
                problem = f"override '{dotted}' must be written 'table.key'"
                raise ConfigError(f"{self.source}: {problem}, e.g. 'training.epochs'")
            given.setdefault(table, {})[key] = value
        config = parse_config(given, source=self.source)
        return dataclasses.replace(config, text=self.text)


def parse_config(
    data: Mapping[str, Any],
    source: str = "<dict>",
    base_dir: str | Path | None = None,
) -> Config:
    """Validate settings shaped like the TOML file: tables of keys.

    Parameters
    ----------
    data : mapping
        Table name to a mapping of key to value. Missing tables and keys take
        their defaults; ``None`` leaves a key unset where its default is unset.
    source : str
        Name used at the start of every error message.
    base_dir : str or Path, optional
        Folder a relative ``data.path`` is taken from; the working directory if
        not given.

    Returns
    -------
    Config
        With ``rule.c_var``, ``rule.lateral_learning_rate``,
        ``training.schedule`` and ``probe.epochs`` resolved.

    Raises
    ------
    ConfigError
        On the first unknown name, wrong type, out-of-range value or
        inconsistency between keys.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: expected tables of settings, got {type(data).__name__}"
        )
    for name, table in data.items():
        if name not in _TABLES:
            raise _unknown(f"{source}:", "table", name, list(_TABLES))
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table, got {table!r}")

    tables = {name: _parse_table(name, data.get(name, {}), source) for name in _TABLES}
    tables = _resolve(tables, source, base_dir)
    given = {name: dict(keys) for name, keys in data.items()}
    if tables["data"].path is not None:
        given["data"]["path"] = tables["data"].path
    return Config(**tables, source=source, given=given)


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file.

    Parameters
    ----------
    path : str or Path
        The file. A relative ``[data] path`` in it is taken from its folder.

    Returns
    -------
    Config
        With ``source`` set to ``str(path)`` and ``text`` to the file's text.

    Raises
    ------
    ConfigError
        If the file is missing, unreadable, not TOML, or holds invalid settings.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise ConfigError(f"{source}: is a directory; expected a TOML file")
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{source}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: not valid TOML: {err}") from None
    config = parse_config(data, source=source, base_dir=path.parent)
    return dataclasses.replace(config, text=text)


def settings_to_config(
    settings: Mapping[str, Any], source: str = "Network()"
) -> Config:
    """Validate flat keyword settings, as given to ``Network(...)``.

    Parameters
    ----------
    settings : mapping
        Keys of :data:`KEY_TABLE` (e.g. ``rule``, ``learning_rate``, ``seed``)
        and their values; each is routed to its table.
    source : str
        Name used at the start of every error message.

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        For an unknown keyword (naming the closest valid one) or a bad value.
    """
    tables: dict[str, dict[str, Any]] = {}
    for key, value in settings.items():
        if key not in KEY_TABLE:
            raise _unknown(f"{source}:", "setting", key, list(KEY_TABLE))
        tables.setdefault(KEY_TABLE[key], {})[key] = value
    return parse_config(tables, source=source)


def _toml(value: Any, kind: str) -> str:
    """Format a default as it would be written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v, kind) for v in value) + "]"
    if value is None and kind == "layers":
        return '"all"'
    return f'"{value}"' if isinstance(value, str) else repr(value)


def reference_markdown() -> str:
    """Return a Markdown reference of every table and key of a config file.

    It is generated from the same field metadata that drives validation.
    """
    lines = ["# Configuration reference", ""]
    lines.append("Generated by `trlsim.config.reference_markdown()`. Every key is")
    lines.append("optional: an unset key takes its default.")
    for name, cls in _TABLES.items():
        summary = inspect.cleandoc(cls.__doc__).splitlines()[0].replace("``", "`")
        lines += ["", f"## [{name}]", "", summary, ""]
        lines += ["| key | type | default | valid values | meaning |"]
        lines += ["|---|---|---|---|---|"]
        for field in dataclasses.fields(cls):
            spec = field.metadata["spec"]
            valid = spec.valid.text if spec.valid else ""
            default = _toml(field.default, spec.kind)
            default = "unset" if default == "None" else f"`{default}`"
            row = [f"`{field.name}`", _KINDS[spec.kind][1], default, valid, spec.doc]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
