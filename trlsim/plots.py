"""Figures of a recorded run, drawn from its trace.

Every function takes a :class:`trlsim.trace.Trace` and returns a
:class:`matplotlib.figure.Figure`. Figures are built with the object API, not
``pyplot``: nothing is shown, no global figure is kept open, and any backend
(Agg included) can save them. A function that draws on one panel takes an
optional ``ax`` to draw into; one that draws several takes an optional
``fig``. :func:`save_plot` writes one figure by name (the names in
:data:`PLOTS`), choosing the format from the file's extension.

A trace that lacks a field a figure needs raises
:class:`trlsim.analysis.MissingDataError`, naming the ``[record] fields``
setting that would add it.

Examples
--------
>>> import trlsim
>>> from trlsim.plots import plot_losses, save_plot
>>> trace = trlsim.open_trace("runs/quick/trace.h5")       # doctest: +SKIP
>>> fig = plot_losses(trace)                                # doctest: +SKIP
>>> fig.savefig("losses.png")                               # doctest: +SKIP
>>> save_plot(trace, "receptive-fields", "fields.pdf")      # doctest: +SKIP
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from . import analysis
from .record import LOSS_COLUMNS, MEMORY_FIELDS
from .trace import open_trace

__all__ = [
    "FORMATS",
    "PLOTS",
    "plot_lateral_vs_covariance",
    "plot_losses",
    "plot_memory",
    "plot_probe",
    "plot_receptive_fields",
    "plot_selectivity",
    "save_plot",
]

#: File formats :func:`save_plot` writes, by extension.
FORMATS = ("png", "pdf", "svg")

LOSS_TITLES = {
    "sim": "sim: invariance in time",
    "var": "var: variance hinge",
    "cov": "cov: decorrelation",
    "lat": "lat: lateral fit",
    "total": "total (weighted)",
}
DIVERGING = "RdBu_r"


def _new_figure(fig, size, layout="constrained"):
    """``fig``, cleared, or a new figure of ``size`` inches."""
    if fig is None:
        return Figure(figsize=size, layout=layout)
    fig.clear()
    return fig


def _axes(ax, size=(6.4, 4.0)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _smoothing_window(n_records):
    return max(1, n_records // 50)


def _mark_epochs(ax, trace, last_step):
    """Faint vertical lines at epoch ends, when there are few enough."""
    per_epoch = trace.attrs.get("batches_per_epoch")
    if per_epoch is None or int(per_epoch) < 1:
        return
    ends = np.arange(int(per_epoch), int(last_step), int(per_epoch))
    if 0 < ends.size <= 40:
        for step in ends:
            ax.axvline(step, color="0.85", linewidth=0.8, zorder=0)


# -- training curves -----------------------------------------------------------


def plot_losses(trace, layers=None, ax=None, terms=None):
    """The loss terms of each layer over learning steps.

    Without ``ax``: one panel per loss term (``sim``, ``var``, ``cov``,
    ``lat`` and the weighted ``total``), one line per layer. With ``ax``: the
    ``terms`` asked for (default only ``total``) on that panel. Raw records
    are drawn faint, under a trailing moving average, when there are many.

    Parameters
    ----------
    trace : trlsim.trace.Trace
    layers : sequence of int, optional
        Recorded layers to draw (default all).
    ax : matplotlib.axes.Axes, optional
    terms : sequence of str, optional
        Columns of :data:`trlsim.record.LOSS_COLUMNS`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    layers = trace.layers if layers is None else list(layers)
    if not layers:
        raise analysis.MissingDataError(f"{trace.path} recorded no layer")
    for layer in layers:
        analysis.require(trace, "losses", layer=layer)
    default = ("total",) if ax is not None else LOSS_COLUMNS
    terms = tuple(default if terms is None else terms)
    unknown = [t for t in terms if t not in LOSS_COLUMNS]
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; terms: {LOSS_COLUMNS}")

    if ax is None:
        columns = min(3, len(terms))
        rows = math.ceil(len(terms) / columns)
        fig = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
        panels = [fig.add_subplot(rows, columns, i + 1) for i in range(len(terms))]
    else:
        fig, panels = ax.figure, [ax] * len(terms)

    # One panel per term: colour = layer. All on one panel: colour = term,
    # line style = layer.
    per_term = ax is None
    styles = ["-", "--", ":", "-."]
    last = 0
    for layer_pos, layer in enumerate(layers):
        raw = analysis.loss_curves(trace, layer)
        window = _smoothing_window(raw["step"].size)
        smooth = analysis.loss_curves(trace, layer, window) if window > 1 else raw
        last = max(last, int(raw["step"][-1]))
        for term_pos, (term, panel) in enumerate(zip(terms, panels)):
            colour = f"C{(layer_pos if per_term else term_pos) % 10}"
            style = "-" if per_term else styles[layer_pos % len(styles)]
            label = f"layer {layer}" if per_term else f"{term}, layer {layer}"
            if window > 1:
                panel.plot(raw["step"], raw[term], color=colour, alpha=0.25, lw=0.8)
            panel.plot(
                smooth["step"], smooth[term], color=colour, ls=style, label=label
            )

    for term, panel in zip(terms, dict.fromkeys(panels)):
        _mark_epochs(panel, trace, last)
        panel.set_xlabel("learning step")
        panel.set_ylabel("loss (summed over neurons)")
        if per_term:
            panel.set_title(LOSS_TITLES[term])
        panel.legend(fontsize="small")
    if per_term:
        rule = trace.attrs.get("rule", "TRL")
        fig.suptitle(f"{rule} loss terms, {_sizes(trace)}")
    return fig


def plot_memory(trace, layer=0, field="var", neurons=8, ax=None):
    """Trajectories of one memory unit for some neurons of a layer.

    Parameters
    ----------
    trace : trlsim.trace.Trace
    layer : int
    field : {"mean", "var", "prev"}
    neurons : int or sequence of int
        The first ``neurons`` recorded neurons, or these neuron indices (they
        must have been recorded).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
        For ``var``, the hinge threshold ``tau`` is drawn dashed.
    """
    if field not in MEMORY_FIELDS:
        raise ValueError(f"memory field must be one of {MEMORY_FIELDS}, got {field!r}")
    steps, values = analysis.aligned_records(trace, field, layer)
    recorded = trace.neurons(layer)
    if isinstance(neurons, (int, np.integer)):
        columns = np.arange(min(int(neurons), recorded.size))
    else:
        position = {int(n): i for i, n in enumerate(recorded)}
        missing = [int(n) for n in neurons if int(n) not in position]
        if missing:
            raise ValueError(
                f"neurons {missing} of layer {layer} were not recorded "
                f"(see [record] neurons)"
            )
        columns = np.array([position[int(n)] for n in neurons], dtype=np.int64)

    fig, ax = _axes(ax)
    for column in columns:
        ax.plot(steps, values[:, column], lw=1.0, label=f"neuron {recorded[column]}")
    if field == "var":
        tau = (trace.attrs.get("settings") or {}).get("tau")
        if tau is not None:
            ax.axhline(tau, color="k", ls="--", lw=0.8, label=f"tau = {tau:g}")
    _mark_epochs(ax, trace, steps[-1])
    ax.set_xlabel("learning step")
    ax.set_ylabel(f"{field} ({trace.records(field, layer, lazy=True).attrs['units']})")
    ax.set_title(f"memory unit {field!r}, layer {layer}")
    if columns.size <= 12:
        ax.legend(fontsize="small", ncols=2)
    return fig


def plot_probe(trace, ax=None):
    """Linear-probe test accuracy per probe epoch, trained against untrained.

    The untrained baseline is the same probe on the network before it learnt
    (spec section 5); the margin between the two lines is what TRL adds.

    Returns
    -------
    matplotlib.figure.Figure
    """
    histories = analysis.probe_histories(trace)
    if histories["trained"] is None and histories["baseline"] is None:
        raise analysis.MissingDataError(
            f"{trace.path} holds no probe results (status {trace.status}): they "
            f"are stored when a run with [probe] enabled = true finishes"
        )
    fig, ax = _axes(ax)
    for key, label, style in (
        ("trained", "trained network", "-o"),
        ("baseline", "untrained baseline", "--s"),
    ):
        history = histories[key]
        if history is not None:
            ax.plot(
                history["epoch"],
                100 * history["test_accuracy"],
                style,
                label=f"{label}: {100 * history['test_accuracy'][-1]:.2f}%",
            )
    ax.set_xlabel("probe epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"linear probe on {trace.attrs.get('dataset', 'the test set')}")
    ax.legend()
    return fig


# -- what the layer learnt -------------------------------------------------------


def _grid(count):
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def plot_receptive_fields(trace, layer=0, n=64, fig=None):
    """The first ``n`` recorded neurons' weights as images, at the last record.

    Each field is scaled to its own largest magnitude, on a diverging
    colormap centred at 0 (red positive, blue negative).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fields, neurons, step = analysis.trace_receptive_fields(trace, layer)
    count = min(int(n), fields.shape[0])
    if count < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows, columns = _grid(count)
    # A fixed layout: constrained layout is slow on grids of many images.
    width, height = 1.1 * columns + 0.2, 1.2 * rows + 0.5
    fig = _new_figure(fig, (width, height), layout=None)
    axes = fig.subplots(
        rows,
        columns,
        squeeze=False,
        gridspec_kw=dict(
            left=0.1 / width,
            right=1 - 0.1 / width,
            bottom=0.1 / height,
            top=1 - 0.5 / height,
            wspace=0.1,
            hspace=0.25,
        ),
    )
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= count:
            continue
        image = fields[i]
        limit = float(np.abs(image).max()) or 1.0
        ax.imshow(
            image, cmap=DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest"
        )
        ax.set_title(str(neurons[i]), fontsize="x-small", pad=1)
    fig.suptitle(f"layer {layer} receptive fields, step {step}", fontsize="medium")
    return fig


def plot_lateral_vs_covariance(trace, layer=0, fig=None):
    """The lateral matrix beside the covariance it learns, at the last record.

    Three panels: ``C_off`` (probe-set activations' covariance, diagonal
    and masked entries zeroed), ``L_off``, on one diverging colour scale, and
    a scatter of their entries against the line ``L = C``. The title gives
    the relative error ``||L_off - C_off|| / ||C_off||`` and the correlation.

    Returns
    -------
    matplotlib.figure.Figure
    """
    result = analysis.trace_lateral_vs_covariance(trace, layer)
    c_off, l_off = result["c_off"], result["l_off"]
    fig = _new_figure(fig, (13.0, 4.2))
    axes = fig.subplots(1, 3)
    limit = float(max(np.abs(c_off).max(), np.abs(l_off).max())) or 1.0
    for ax, matrix, title in (
        (axes[0], c_off, "C_off: activation covariance"),
        (axes[1], l_off, "L_off: lateral matrix"),
    ):
        image = ax.imshow(
            matrix, cmap=DIVERGING, vmin=-limit, vmax=limit, interpolation="nearest"
        )
        ax.set_title(title)
        ax.set_xlabel("neuron")
        ax.set_ylabel("neuron")
    fig.colorbar(image, ax=axes[:2], shrink=0.8)

    c_entries, l_entries = c_off[result["compared"]], l_off[result["compared"]]
    if c_entries.size > 20000:
        # Enough points to see the trend without a huge vector file.
        pick = np.random.default_rng(0).choice(c_entries.size, 20000, replace=False)
        c_entries, l_entries = c_entries[pick], l_entries[pick]
    ax = axes[2]
    ax.scatter(c_entries, l_entries, s=4, alpha=0.5, linewidths=0)
    ax.axline((0, 0), slope=1, color="k", lw=0.8, ls="--", label="L = C")
    ax.set_xlabel("C_off entry")
    ax.set_ylabel("L_off entry")
    ax.set_title(f"correlation {result['correlation']:.3f}")
    ax.legend(fontsize="small")
    step = result["step"]
    fig.suptitle(
        f"layer {layer}, step {step}: relative error ||L_off - C_off|| / ||C_off|| "
        f"= {result['relative_error']:.3f}; off-diagonal energy of C "
        f"{result['off_energy']:.3g} ({result['off_energy_ratio']:.3f} of diagonal)"
    )
    return fig


def plot_selectivity(trace, layer=0, fig=None, neurons=4, k=8):
    """Class selectivity of a layer's neurons and what excites the most selective.

    Top: histogram of the selectivity index
    (:func:`trlsim.analysis.class_selectivity`) and how many neurons prefer
    each class. Below: for the ``neurons`` most selective neurons, the ``k``
    probe inputs that excite each most, as images (when the trace has an
    ``image_shape``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    result = analysis.trace_class_selectivity(trace, layer)
    selectivity, preferred = result["selectivity"], result["preferred"]
    x, _ = trace.probe_set()
    shape = analysis.image_shape(trace)
    if shape is None or int(np.prod(shape)) != x.shape[1]:
        shape = (1, x.shape[1])
    k = min(int(k), x.shape[0])
    chosen = np.argsort(-selectivity, kind="stable")[: min(neurons, selectivity.size)]
    top = analysis.top_inputs(result["activations"], k)

    width = max(8.0, 1.1 * k + 1.0)
    fig = _new_figure(fig, (width, 3.2 + 1.2 * len(chosen)), layout=None)
    upper, lower = fig.subfigures(2, 1, height_ratios=[3.2, 1.2 * max(1, len(chosen))])
    hist_ax, class_ax = upper.subplots(
        1, 2, gridspec_kw=dict(left=0.08, right=0.98, bottom=0.16, top=0.82, wspace=0.2)
    )
    # The index lies in [0, 1] for non-negative activations; tanh can leave it.
    low, high = min(0.0, selectivity.min()), max(1.0, selectivity.max())
    hist_ax.hist(selectivity, bins=np.linspace(low, high, 21), color="C0")
    hist_ax.set_xlabel("selectivity index")
    hist_ax.set_ylabel("neurons")
    hist_ax.set_title(f"median {np.median(selectivity):.2f}")
    counts = np.bincount(preferred[preferred >= 0], minlength=result["n_classes"])
    class_ax.bar(np.arange(counts.size), counts, color="C1")
    class_ax.set_xticks(np.arange(counts.size))
    class_ax.set_xlabel("preferred class")
    class_ax.set_ylabel("neurons")
    silent = int((preferred < 0).sum())
    class_ax.set_title(f"{silent} silent neurons" if silent else "all neurons fire")
    upper.suptitle(
        f"layer {layer} class selectivity on {x.shape[0]} probe inputs, "
        f"step {result['step']}"
    )

    if len(chosen):
        axes = lower.subplots(
            len(chosen),
            k,
            squeeze=False,
            gridspec_kw=dict(
                left=1.0 / width,
                right=0.98,
                bottom=0.02,
                top=1 - 0.45 / (1.2 * len(chosen)),
                wspace=0.1,
                hspace=0.3,
            ),
        )
        labels = result["labels"]
        for row, neuron in enumerate(chosen):
            for column in range(k):
                ax = axes[row, column]
                sample = top[neuron, column]
                ax.imshow(
                    x[sample].reshape(shape), cmap="gray_r", interpolation="nearest"
                )
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(str(labels[sample]), fontsize="x-small", pad=1)
            axes[row, 0].set_ylabel(
                f"n{result['neurons'][neuron]}\ns={selectivity[neuron]:.2f}",
                fontsize="small",
                rotation=0,
                ha="right",
                va="center",
            )
        lower.suptitle(
            "most selective neurons: top-activating inputs (label above)",
            fontsize="medium",
        )
    return fig


def _sizes(trace):
    return "-".join(map(str, trace.layer_sizes))


#: Plot kinds by name, as ``trlsim plot`` and :func:`save_plot` take them.
PLOTS = {
    "losses": plot_losses,
    "memory": plot_memory,
    "receptive-fields": plot_receptive_fields,
    "lateral": plot_lateral_vs_covariance,
    "selectivity": plot_selectivity,
    "probe": plot_probe,
}

#: The layer argument each plot kind takes (None: not per layer).
LAYER_ARGUMENT = {
    "losses": None,
    "memory": "layer",
    "receptive-fields": "layer",
    "lateral": "layer",
    "selectivity": "layer",
    "probe": None,
}


def save_plot(trace, kind, path, layer=None, dpi=150, **options):
    """Draw the plot ``kind`` of a trace and write it to ``path``.

    Parameters
    ----------
    trace : trlsim.trace.Trace or path
        An open trace, or a trace file (opened and closed here).
    kind : str
        A key of :data:`PLOTS`.
    path : str or Path
        The format follows the extension: ``.png``, ``.pdf`` or ``.svg``.
    layer : int, optional
        For the per-layer kinds (all but ``losses`` and ``probe``); default 0.
    dpi : int
        Resolution of a PNG.
    **options
        Passed to the plot function.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        For an unknown kind or extension.
    trlsim.analysis.MissingDataError
        When the trace lacks a field the plot needs.
    """
    if kind not in PLOTS:
        raise ValueError(f"unknown plot {kind!r}; plots: {', '.join(PLOTS)}")
    path = Path(path)
    extension = path.suffix.lower().lstrip(".")
    if extension not in FORMATS:
        raise ValueError(
            f"cannot tell the format of {path} from its extension "
            f"{path.suffix or '(none)'}; use one of: "
            + ", ".join(f".{name}" for name in FORMATS)
        )
    if layer is not None:
        if LAYER_ARGUMENT[kind] is None:
            raise ValueError(f"the {kind!r} plot shows every layer: it takes no layer")
        options[LAYER_ARGUMENT[kind]] = layer

    if not hasattr(trace, "records"):
        with open_trace(trace) as opened:
            return save_plot(opened, kind, path, dpi=dpi, **options)
    fig = PLOTS[kind](trace, **options)
    fig.savefig(path, format=extension, dpi=dpi)
    return path
