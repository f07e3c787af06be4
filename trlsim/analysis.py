"""Post-hoc analysis of a recorded run: receptive fields, selectivity, lateral fit.

Each figure is computed by a plain function on arrays (no file, no trlsim
object), so it can be checked against a known answer and reused on activations
from anywhere. A thin wrapper named ``trace_*`` (or taking a
:class:`trlsim.trace.Trace` first) picks the right records from a trace and
hands them to it. A trace that lacks what a wrapper needs raises
:class:`MissingDataError`, which names the ``[record] fields`` setting that
would add it.

Examples
--------
>>> import numpy as np
>>> from trlsim.analysis import class_selectivity
>>> z = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
>>> labels = np.array([0, 1, 2])
>>> selectivity, preferred = class_selectivity(z, labels, n_classes=3)
>>> selectivity.tolist(), preferred.tolist()
([1.0, 0.0], [0, 0])
"""

import json
import warnings

import numpy as np

from .record import FIELDS, LOSS_COLUMNS, TraceError

__all__ = [
    "MissingDataError",
    "aligned_records",
    "class_selectivity",
    "image_shape",
    "lateral_vs_covariance",
    "loss_curves",
    "moving_average",
    "off_diagonal_mask",
    "probe_histories",
    "receptive_fields",
    "require",
    "top_inputs",
    "trace_class_selectivity",
    "trace_lateral_vs_covariance",
    "trace_receptive_fields",
]


class MissingDataError(TraceError):
    """A trace lacks what an analysis or plot needs (a field, a layer, results)."""


# -- reading what an analysis needs --------------------------------------------


def require(trace, *fields, layer=0):
    """Check that ``trace`` recorded ``fields`` for ``layer``, with records.

    Parameters
    ----------
    trace : trlsim.trace.Trace
    *fields : str
        Names from :data:`trlsim.record.FIELDS`.
    layer : int
        The hidden layer (0-based) the fields are needed for.

    Raises
    ------
    MissingDataError
        Naming the missing field or layer and the ``[record]`` setting that
        would add it, or saying that the run has not written a record yet.
    """
    for field in fields:
        if field not in FIELDS:
            raise ValueError(f"unknown field {field!r}; fields: {', '.join(FIELDS)}")
        if field not in trace.fields:
            listed = ", ".join(f'"{name}"' for name in (*trace.fields, field))
            raise MissingDataError(
                f"{trace.path} has no {field!r} records (recorded fields: "
                f"{', '.join(trace.fields) or 'none'}); record it with "
                f"[record] fields = [{listed}]"
            )
    if layer not in trace.layers:
        raise MissingDataError(
            f"{trace.path} recorded layers {trace.layers}, not layer {layer}; "
            f"record it with [record] layers (unset records every layer)"
        )
    for field in fields:
        if trace.records(field, layer, lazy=True).shape[0] == 0:
            raise MissingDataError(
                f"{trace.path} has no {field!r} record for layer {layer} yet "
                f"(status {trace.status}); the run writes one every "
                f"{_cadence(trace, field)} steps"
            )


def _cadence(trace, field):
    return int(trace.file[f"steps/{FIELDS[field][0]}"].attrs["every"])


def aligned_records(trace, field, layer=0):
    """Steps and records of ``field``, cut to the same length.

    While a run writes the trace, a flush extends the step index of a cadence
    before the fields' datasets, so a reader can find the index a block longer
    than a field (or shorter, after refreshing one and not the other); both
    are cut to the rows present in each.

    Returns
    -------
    steps : int64 array (n_records,)
    values : float32 array (n_records, ...)
        Read whole into memory: for large fields (weights, activations) read
        single records with ``trace.records(field, layer, lazy=True)``.
    """
    require(trace, field, layer=layer)
    values = trace.records(field, layer, lazy=True)
    steps = trace.steps(field)
    count = min(values.shape[0], steps.shape[0])
    return steps[:count], values[:count]


def _record(trace, field, layer, record):
    """One record of ``field`` (negative ``record`` counts from the last)."""
    require(trace, field, layer=layer)
    dataset = trace.records(field, layer, lazy=True)
    steps = trace.steps(field)
    count = min(dataset.shape[0], steps.shape[0])
    if not -count <= record < count:
        raise IndexError(
            f"{trace.path} holds {count} {field!r} records for layer {layer}; "
            f"asked for record {record}"
        )
    record %= count
    return dataset[record], int(steps[record])


def image_shape(trace):
    """The shape of one input image (root attribute ``image_shape``), or None."""
    shape = trace.attrs.get("image_shape")
    if shape is None:
        return None
    return tuple(int(n) for n in np.atleast_1d(shape))


# -- receptive fields ----------------------------------------------------------


def receptive_fields(weights, image_shape):
    """Each neuron's feed-forward weights laid out as an image.

    Parameters
    ----------
    weights : array (n_neurons, n_inputs)
        ``W`` of a first layer, rows = neurons.
    image_shape : sequence of int
        Shape of one input image, e.g. ``(28, 28)``; its size must equal
        ``n_inputs``.

    Returns
    -------
    array (n_neurons, rows, cols)
        A view of ``weights`` where possible.
    """
    weights = np.asarray(weights)
    shape = tuple(int(n) for n in image_shape)
    if weights.ndim != 2:
        raise ValueError(f"weights must be (n_neurons, n_inputs), got {weights.shape}")
    if int(np.prod(shape)) != weights.shape[1]:
        raise ValueError(
            f"image shape {shape} holds {int(np.prod(shape))} pixels, but the "
            f"weights have {weights.shape[1]} inputs"
        )
    return weights.reshape(weights.shape[0], *shape)


def trace_receptive_fields(trace, layer=0, record=-1):
    """Receptive fields of ``layer`` at one weights record of a trace.

    Parameters
    ----------
    trace : trlsim.trace.Trace
    layer : int
        Only a layer whose inputs are the images (layer 0) has receptive
        fields in pixel space.
    record : int
        Which ``weights`` record (default the last).

    Returns
    -------
    fields : array (n_recorded_neurons, rows, cols)
    neurons : int array
        The neuron index of each field.
    step : int
        Learning step of the record.
    """
    weights, step = _record(trace, "weights", layer, record)
    shape = image_shape(trace)
    if shape is None:
        raise MissingDataError(
            f"{trace.path} has no image_shape attribute: its inputs are not "
            f"known to be images"
        )
    if int(np.prod(shape)) != weights.shape[1]:
        raise ValueError(
            f"layer {layer} has {weights.shape[1]} inputs, not the "
            f"{'x'.join(map(str, shape))} image pixels: receptive fields in "
            f"pixel space exist for layer 0 only"
        )
    return receptive_fields(weights, shape), trace.neurons(layer), step


# -- class selectivity ---------------------------------------------------------


def class_selectivity(activations, labels, n_classes):
    """How much each neuron prefers one class over the others.

    With ``m_c`` the mean activation of a neuron over the samples of class
    ``c``, ``m_max`` the largest of them and ``m_rest`` the mean of the
    others, the selectivity index is

    .. math:: s = (m_{max} - m_{rest}) / (m_{max} + m_{rest}).

    For non-negative activations (ReLU) it lies in [0, 1]: 1 for a neuron
    that fires for one class only, 0 for one that responds to every class
    alike. A neuron silent on every sample (denominator 0) gets 0. Classes
    with no sample in ``labels`` are left out of the means. For activations
    that can be negative (tanh) the index can leave [0, 1].

    Parameters
    ----------
    activations : array (n_samples, n_neurons)
    labels : int array (n_samples,)
        In ``[0, n_classes)``.
    n_classes : int

    Returns
    -------
    selectivity : float64 array (n_neurons,)
    preferred : int64 array (n_neurons,)
        The class of ``m_max``; -1 for a silent neuron.
    """
    activations = np.asarray(activations, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if activations.ndim != 2 or labels.shape != (activations.shape[0],):
        raise ValueError(
            f"activations must be (n_samples, n_neurons) and labels (n_samples,); "
            f"got {activations.shape} and {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    present = np.flatnonzero(np.bincount(labels, minlength=n_classes))
    if present.size < 2:
        raise ValueError(
            f"class selectivity needs samples of at least 2 classes, got "
            f"{present.size}"
        )
    means = np.stack([activations[labels == c].mean(axis=0) for c in present])
    best = means.argmax(axis=0)
    top = means.max(axis=0)
    rest = (means.sum(axis=0) - top) / (present.size - 1)
    denominator = top + rest
    silent = denominator == 0
    selectivity = np.where(silent, 0.0, (top - rest) / np.where(silent, 1, denominator))
    preferred = np.where(silent, -1, present[best])
    return selectivity, preferred


def top_inputs(activations, k):
    """Indices of the ``k`` inputs that excite each neuron most.

    Parameters
    ----------
    activations : array (n_samples, n_neurons)
    k : int
        At most ``n_samples``.

    Returns
    -------
    int64 array (n_neurons, k)
        Row ``j`` lists sample indices, strongest activation of neuron ``j``
        first (ties: lower index first).
    """
    activations = np.asarray(activations)
    if activations.ndim != 2:
        raise ValueError(
            f"activations must be (n_samples, n_neurons), got {activations.shape}"
        )
    if not 1 <= k <= activations.shape[0]:
        raise ValueError(f"k must lie in 1..{activations.shape[0]}, got {k}")
    order = np.argsort(-activations, axis=0, kind="stable")
    return np.ascontiguousarray(order[:k].T, dtype=np.int64)


def trace_class_selectivity(trace, layer=0, record=-1):
    """:func:`class_selectivity` of probe-set activations recorded in a trace.

    Returns
    -------
    dict
        ``selectivity`` and ``preferred`` (per recorded neuron), ``neurons``
        (their indices), ``activations`` (n_samples, n_recorded), ``labels``,
        ``n_classes`` and ``step`` of the record.
    """
    activations, step = _record(trace, "activations", layer, record)
    _, labels = trace.probe_set()
    if labels is None:
        raise MissingDataError(
            f"{trace.path} has no probe-set labels (/probe_set/y): class "
            f"selectivity needs them"
        )
    n_classes = int(trace.attrs.get("n_classes", labels.max() + 1))
    selectivity, preferred = class_selectivity(activations, labels, n_classes)
    return {
        "selectivity": selectivity,
        "preferred": preferred,
        "neurons": trace.neurons(layer),
        "activations": activations,
        "labels": labels,
        "n_classes": n_classes,
        "step": step,
    }


# -- lateral matrix against the activations' covariance --------------------------


def off_diagonal_mask(n, mask=None):
    """Boolean (n, n): True off the diagonal where ``mask`` (if given) is non-zero."""
    keep = ~np.eye(n, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (n, n):
            raise ValueError(f"mask must be ({n}, {n}), got {mask.shape}")
        keep &= mask != 0
    return keep


def lateral_vs_covariance(lateral, activations, mask=None, neurons=None):
    """How well the lateral matrix ``L`` matches the activations' covariance.

    The lateral loss pulls ``L`` towards ``C_off``, the covariance of the
    centred activations with its diagonal (and the entries the layer's
    sparsity mask removes) set to 0 (spec section 2). With ``z`` the
    activations of ``N`` samples and ``zc = z - mean(z)``,
    ``C = zc^T zc / N`` (biased, as in training).

    Parameters
    ----------
    lateral : array (n_sel, n) or (n_sel, n_sel)
        Rows of ``L`` for the neurons whose activations are given. With
        ``n > n_sel`` (a recorded subset of a layer), ``neurons`` picks the
        columns.
    activations : array (n_samples, n_sel)
    mask : array (n, n) or (n_sel, n_sel), optional
        The layer's covariance mask (1 where ``L`` learns); only entries where
        it is non-zero are compared.
    neurons : int array (n_sel,), optional
        Indices of the neurons in the layer; needed when ``lateral`` or
        ``mask`` are for the whole layer.

    Returns
    -------
    dict
        ``covariance``
            ``C`` (n_sel, n_sel), diagonal included.
        ``c_off``, ``l_off``
            ``C`` and ``L`` with the diagonal and masked entries set to 0.
        ``off_energy``
            Sum of squared off-diagonal entries of ``C``.
        ``off_energy_ratio``
            ``off_energy`` divided by the sum of squared diagonal entries
            (0: independent neurons; NaN when every neuron is silent).
        ``relative_error``
            ``||L_off - C_off|| / ||C_off||`` (Frobenius; NaN when ``C_off``
            is 0).
        ``correlation``
            Pearson correlation of the compared entries of ``L`` and ``C``
            (NaN when either is constant).
        ``compared``
            Boolean (n_sel, n_sel): the entries compared.
    """
    lateral = np.asarray(lateral, dtype=np.float64)
    activations = np.asarray(activations, dtype=np.float64)
    if activations.ndim != 2 or lateral.ndim != 2:
        raise ValueError(
            f"lateral must be a matrix and activations (n_samples, n_neurons); "
            f"got {lateral.shape} and {activations.shape}"
        )
    n_sel = activations.shape[1]
    if lateral.shape[0] != n_sel:
        raise ValueError(
            f"lateral has {lateral.shape[0]} rows for {n_sel} neurons' activations"
        )
    if lateral.shape[1] != n_sel or (mask is not None and np.shape(mask)[0] != n_sel):
        if neurons is None:
            raise ValueError(
                f"lateral rows have {lateral.shape[1]} columns for {n_sel} "
                f"neurons: pass neurons, the recorded neurons' indices"
            )
        neurons = np.asarray(neurons, dtype=np.int64)
        if lateral.shape[1] != n_sel:
            lateral = lateral[:, neurons]
        if mask is not None and np.shape(mask)[0] != n_sel:
            mask = np.asarray(mask)[np.ix_(neurons, neurons)]

    centred = activations - activations.mean(axis=0)
    covariance = centred.T @ centred / max(activations.shape[0], 1)
    keep = off_diagonal_mask(n_sel, mask)
    c_off = np.where(keep, covariance, 0.0)
    l_off = np.where(keep, lateral, 0.0)

    off_energy = float(np.sum(c_off**2))
    diag_energy = float(np.sum(np.diag(covariance) ** 2))
    c_norm = np.sqrt(off_energy)
    error = float(np.linalg.norm(l_off - c_off))
    c_entries, l_entries = covariance[keep], lateral[keep]
    if c_entries.size > 1 and np.ptp(c_entries) > 0 and np.ptp(l_entries) > 0:
        correlation = float(np.corrcoef(l_entries, c_entries)[0, 1])
    else:
        correlation = float("nan")
    return {
        "covariance": covariance,
        "c_off": c_off,
        "l_off": l_off,
        "off_energy": off_energy,
        "off_energy_ratio": off_energy / diag_energy if diag_energy else float("nan"),
        "relative_error": float(error / c_norm) if c_norm else float("nan"),
        "correlation": correlation,
        "compared": keep,
    }


def trace_lateral_vs_covariance(trace, layer=0, record=-1):
    """:func:`lateral_vs_covariance` at one ``lateral`` record of a trace.

    The activations are the probe-set record made at the same step; where the
    two cadences differ, the one nearest in steps is used, with a warning.
    Training pulls ``L`` towards the covariance of each batch (chunks of
    same-class samples, spec section 3), which differs from that of the probe
    set: expect a good fit to show as a high correlation and a relative error
    well below 1, not as an error of 0.

    Returns
    -------
    dict
        That of :func:`lateral_vs_covariance`, plus ``step`` (of the lateral
        record), ``activations_step`` and ``neurons``.
    """
    require(trace, "lateral", "activations", layer=layer)
    if (trace.attrs.get("settings") or {}).get("lateral") == "direct":
        warnings.warn(
            f'{trace.path} was trained with [rule] lateral = "direct": the '
            f"lateral matrix does not learn there, so it is not expected to "
            f"match the covariance",
            stacklevel=2,
        )
    lateral, step = _record(trace, "lateral", layer, record)
    records = trace.records("activations", layer, lazy=True)
    steps = trace.steps("activations")[: records.shape[0]]
    nearest = int(np.argmin(np.abs(steps - step)))
    if steps[nearest] != step:
        warnings.warn(
            f"{trace.path}: no probe-set activations at step {step} (the lateral "
            f"record); using those of step {int(steps[nearest])}. Set [record] "
            f"activations_every = weights_every to record both together",
            stacklevel=2,
        )
    neurons = trace.neurons(layer)
    mask_key = f"layers/{layer}/mask"
    mask = trace.file[mask_key][()] if mask_key in trace.file else None
    # One record read from the file, not the whole (large) dataset.
    result = lateral_vs_covariance(lateral, records[nearest], mask, neurons)
    result.update(step=step, activations_step=int(steps[nearest]), neurons=neurons)
    return result


# -- losses and probe accuracy ----------------------------------------------------


def moving_average(values, window):
    """Trailing mean over ``window`` samples, same length as ``values``.

    The first ``window - 1`` outputs average over the samples seen so far.
    Works along the first axis.
    """
    values = np.asarray(values, dtype=np.float64)
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if window == 1 or values.shape[0] == 0:
        return values.copy()
    sums = np.cumsum(values, axis=0)
    out = sums.copy()
    out[window:] = sums[window:] - sums[:-window]
    counts = np.minimum(np.arange(1, values.shape[0] + 1), window)
    return out / counts.reshape(-1, *([1] * (values.ndim - 1)))


def loss_curves(trace, layer=0, window=1):
    """Loss terms of ``layer`` over the recorded steps.

    Parameters
    ----------
    trace : trlsim.trace.Trace
    layer : int
    window : int
        Records in a trailing :func:`moving_average` (1: raw).

    Returns
    -------
    dict
        ``step``, ``epoch`` and one float64 array per column of
        :data:`trlsim.record.LOSS_COLUMNS` (``sim``, ``var``, ``cov``,
        ``lat``: unweighted, summed over neurons; ``total``: weighted sum).
    """
    steps, values = aligned_records(trace, "losses", layer)
    values = moving_average(values, window)
    out = {"step": steps, "epoch": trace.epochs("losses")[: steps.shape[0]]}
    out.update({name: values[:, i] for i, name in enumerate(LOSS_COLUMNS)})
    return out


def _history(result):
    if not result or not result.get("history"):
        return None
    history = result["history"]

    def column(key):
        return np.array([r.get(key, np.nan) for r in history], dtype=np.float64)

    return {
        "epoch": np.array([record["epoch"] for record in history], dtype=np.int64),
        "test_accuracy": column("test_accuracy"),
        "train_accuracy": column("train_accuracy"),
    }


def probe_histories(trace):
    """Probe accuracy per probe epoch, trained network and untrained baseline.

    The trained probe comes from the run summary stored when the run ended;
    the baseline also from the root attribute ``baseline_probe``, written
    when the trace is created, so a live trace has it.

    Returns
    -------
    dict
        ``trained`` and ``baseline``: each None where absent, else a dict of
        arrays ``epoch`` (from 1), ``test_accuracy`` and ``train_accuracy``
        (fractions).
    """
    summary = trace.summary or {}
    baseline = summary.get("baseline_probe") or trace.attrs.get("baseline_probe")
    if isinstance(baseline, str):
        baseline = json.loads(baseline)
    return {"trained": _history(summary.get("probe")), "baseline": _history(baseline)}
