"""CUDA kernels of one TRL learning step, the twins of :mod:`trlsim.kernels.cpu`.

The host-callable functions here have the names, arguments and argument order
of their CPU twins, with device arrays in place of host arrays:

1. :func:`forward`          ``a = W x + b``, ``z = phi(a)``
2. :func:`memory_update`    batch mean and variance into the memory units
3. :func:`local_update`     each neuron's output term, then its weights and bias
4. :func:`lateral_update`   the lateral matrix toward the layer's covariance
5. :func:`optimizer_update` one optimizer step on flat arrays

Each launches a ``*_kernel`` whose threads walk the layer's neurons ``j`` with
a grid-stride loop, one neuron per thread at a time, so any layer size runs on
any grid; the block size is :data:`trlsim.config.CUDA_BLOCK_SIZE`, read at
every launch. As on the CPU, neuron ``j`` owns row ``j`` of every matrix it
writes and its own memory units, so threads never write the same cell and need
no atomics, and results do not depend on the launch configuration.

The per-element math is not repeated here: the plain Python functions behind
the CPU kernels' helpers (``.py_func`` of :func:`~trlsim.kernels.scalar.activate`,
:func:`~trlsim.kernels.scalar.activation_slope`,
:func:`~trlsim.kernels.scalar.optimizer_row` and of the invariance gradient and
row products of :mod:`trlsim.kernels.cpu`) are compiled a second time, as CUDA
device functions.

Differences from the CPU side, all of layout, none of arithmetic:

* Memory units are passed as a float32 ``(n, 3)`` array whose columns
  :data:`MEAN`, :data:`VAR`, :data:`PREV` are the fields of
  :data:`trlsim.network.MEMORY_DTYPE`: the same bytes as the structured array
  (:func:`memory_columns`), without record types on the device.
* Kernels cannot allocate, so per-neuron work rows live in global ``scratch``
  arrays (:func:`scratch_arrays`), which the host functions take as an extra,
  optional last argument.

This module imports :mod:`numba.cuda`; :mod:`trlsim.backend` imports it only
when a CUDA backend is asked for. Set ``NUMBA_ENABLE_CUDASIM=1`` before
:mod:`numba.cuda` is first imported to run these kernels on Numba's simulator.
"""

import math

import numba
import numpy as np
from numba import cuda

from .. import config
from . import cpu, scalar
from .cpu import LATERAL_MATRIX, LOSS_COV, LOSS_LAT, LOSS_SIM, LOSS_VAR

#: Columns of the memory units on the device (the order of ``MEMORY_DTYPE``).
MEAN, VAR, PREV = 0, 1, 2

#: Most blocks one launch uses; the grid-stride loops cover the rest.
MAX_BLOCKS = 1024

# The shared per-element math, compiled for the device.
_activate = cuda.jit(device=True)(scalar.activate.py_func)
_activation_slope = cuda.jit(device=True)(scalar.activation_slope.py_func)
_optimizer_row = cuda.jit(device=True)(scalar.optimizer_row.py_func)
_invariance_gradient = cuda.jit(device=True)(cpu._invariance_gradient.py_func)
_dot_rows = cuda.jit(device=True)(cpu._dot_rows.py_func)
_accumulate_rows = cuda.jit(device=True)(cpu._accumulate_rows.py_func)


def _grid(n_items):
    """``(blocks, threads)`` for a grid-stride loop over ``n_items``."""
    threads = config.CUDA_BLOCK_SIZE
    blocks = min(max(1, math.ceil(n_items / threads)), MAX_BLOCKS)
    return blocks, threads


def memory_columns(neurons):
    """View memory units of ``MEMORY_DTYPE`` as a float32 ``(n, 3)`` array.

    No copy: the view shares the records' bytes, so it can be sent to the
    device and copied back into in place.
    """
    fields = neurons.dtype.fields
    if (
        neurons.dtype.names != ("mean", "var", "prev")
        or any(fields[name][0] != np.float32 for name in ("mean", "var", "prev"))
        or neurons.dtype.itemsize != 12
        or not neurons.flags.c_contiguous
    ):
        raise ValueError(
            "memory units must be a contiguous array of MEMORY_DTYPE "
            f"(float32 mean, var, prev), got dtype {neurons.dtype}"
        )
    return neurons.view(np.float32).reshape(neurons.shape[0], 3)


def scratch_arrays(n_neurons, n_inputs, n_rows):
    """Device work rows for :func:`local_update` and :func:`lateral_update`.

    Returns
    -------
    dict of float32 device arrays
        ``lat`` and ``grad_a`` ``(n, B)``: each neuron's lateral signal and
        output term; ``grad_w`` ``(n, n_in)``: its weight gradient; ``cov``
        ``(n, n)``: its row of the covariance (then of the lateral gradient).
    """
    return {
        "lat": cuda.device_array((n_neurons, n_rows), np.float32),
        "grad_a": cuda.device_array((n_neurons, n_rows), np.float32),
        "grad_w": cuda.device_array((n_neurons, n_inputs), np.float32),
        "cov": cuda.device_array((n_neurons, n_neurons), np.float32),
    }


@cuda.jit
def forward_kernel(x, weights, bias, activation, a_t, z_t):
    """Device side of :func:`forward`: ``z[j, t] = phi(W[j] . x[t] + b[j])``.

    Arguments as in :func:`forward`. Thread ``cuda.grid(1)`` takes neurons
    ``j, j + gridsize, ...`` and writes only their rows of ``a_t`` and ``z_t``,
    so any grid gives the same result.
    """
    for j in range(cuda.grid(1), weights.shape[0], cuda.gridsize(1)):
        a_row = a_t[j]
        _dot_rows(weights[j], x, a_row)
        for t in range(a_row.shape[0]):
            a_row[t] += bias[j]
            z_t[j, t] = _activate(a_row[t], activation)


def forward(x, weights, bias, activation, a_t, z_t):
    """Forward pass of one layer on the device, neuron by neuron.

    ``a[j, t] = sum_i W[j, i] * x[t, i] + b[j]`` and ``z[j, t] = phi(a[j, t])``.

    Parameters
    ----------
    x : float32 device array (B, n_in)
        Input rows, one per stream position ``t``. Read.
    weights : float32 device array (n, n_in)
        ``W``. Read.
    bias : float32 device array (n,)
        ``b``. Read.
    activation : int
        Activation code (:data:`trlsim.kernels.scalar.ACTIVATION_CODES`).
    a_t, z_t : float32 device arrays (n, B)
        Pre-activations and activations, neuron-major. Written.

    Notes
    -----
    One thread per neuron; thread ``j`` writes only row ``j`` of ``a_t`` and
    ``z_t``.
    """
    forward_kernel[_grid(weights.shape[0])](x, weights, bias, activation, a_t, z_t)


@cuda.jit
def memory_update_kernel(z_t, neurons, var_momentum, zc_t):
    """Device side of :func:`memory_update`: batch mean, variance and last
    activation into each neuron's memory units, and ``zc = z - mean``.

    Arguments as in :func:`memory_update`. Grid-stride over neurons; thread
    for ``j`` touches only row ``j`` of ``neurons`` and ``zc_t``. Accumulates
    in float64, as the CPU twin does.
    """
    n_rows = z_t.shape[1]
    keep = np.float32(var_momentum)
    for j in range(cuda.grid(1), z_t.shape[0], cuda.gridsize(1)):
        row = z_t[j]
        total = np.float64(0.0)
        for t in range(n_rows):
            total += row[t]
        mean = total / n_rows
        spread = np.float64(0.0)
        for t in range(n_rows):
            centred = row[t] - mean
            zc_t[j, t] = centred
            spread += centred * centred
        neurons[j, MEAN] = mean
        neurons[j, VAR] = keep * neurons[j, VAR] + (1.0 - keep) * (spread / n_rows)
        neurons[j, PREV] = row[n_rows - 1]


def memory_update(z_t, neurons, var_momentum, zc_t):
    """Update the memory units from a batch and centre the activations.

    For neuron ``j`` over the ``B`` rows of the batch::

        m_j    = mean_t z[j, t]                      (the batch mean)
        mean_j <- m_j
        var_j  <- k * var_j + (1 - k) * mean_t (z[j, t] - m_j)**2
        prev_j <- z[j, B - 1]
        zc[j, t] = z[j, t] - m_j

    Parameters
    ----------
    z_t : float32 device array (n, B)
        Activations, neuron-major. Read.
    neurons : float32 device array (n, 3)
        Memory units, columns :data:`MEAN`, :data:`VAR`, :data:`PREV` (see
        :func:`memory_columns`). Updated.
    var_momentum : float
        ``k``, the momentum of the running variance (0.9 in the paper).
    zc_t : float32 device array (n, B)
        Centred activations. Written.

    Notes
    -----
    One thread per neuron; thread ``j`` touches only row ``j`` of each array.
    """
    memory_update_kernel[_grid(z_t.shape[0])](z_t, neurons, var_momentum, zc_t)


@cuda.jit
def local_update_kernel(
    x,
    a_t,
    z_t,
    zc_t,
    zc,
    lateral,
    mask,
    neurons,
    weights,
    bias,
    weights_first,
    weights_second,
    bias_first,
    bias_second,
    opt,
    activation,
    rule,
    chunk_size,
    lateral_mode,
    c_sim,
    c_var,
    c_cov,
    tau,
    learn,
    losses,
    lat,
    grad_a,
    grad_w,
    cov,
):
    """Device side of :func:`local_update`: neuron ``j``'s fourfold sum
    ``dL/da[j, t]``, its loss terms, then one optimizer step on ``W[j]``, ``b[j]``.

    Arguments as in :func:`local_update`, with the work rows of
    :func:`scratch_arrays` last: ``lat``, ``grad_a`` (n, B), ``grad_w``
    (n, n_in) and ``cov`` (n, n), of which thread ``j`` uses row ``j`` only.

    Notes
    -----
    Grid-stride over neurons. Thread ``j`` writes row ``j`` of ``weights``,
    its moments, ``losses`` and the work rows, and ``bias[j]``; it reads other
    neurons only through ``zc``, ``lateral`` and ``mask``, which no thread
    writes. No atomics, no shared memory.
    """
    n_rows = x.shape[0]
    n = weights.shape[0]
    inv_rows = np.float32(1.0 / n_rows)
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        zc_row = zc_t[j]
        gate = max(tau - neurons[j, VAR], 0.0)

        # Lateral signal: how much neuron j moves with the others.
        lat_row = lat[j]
        if lateral_mode == LATERAL_MATRIX:
            _dot_rows(lateral[j], zc, lat_row)
            cov_loss = 0.0
            for t in range(n_rows):
                cov_loss += zc_row[t] * lat_row[t]
            cov_loss *= inv_rows
        else:
            cov_row = cov[j]
            for k in range(n):
                cov_row[k] = 0.0
            # Scaled by 1/B after the sum, not before: no temporary row.
            _accumulate_rows(zc_row, zc, cov_row)
            cov_loss = 0.0
            for k in range(n):
                cov_row[k] *= inv_rows
                cov_loss += mask[j, k] * cov_row[k] * cov_row[k]
                cov_row[k] *= 2.0 * (mask[j, k] + mask[k, j])
            _dot_rows(cov_row, zc, lat_row)

        # The fourfold sum, through the activation's slope.
        grad_row = grad_a[j]
        sim_loss = _invariance_gradient(z_t[j], grad_row, rule, chunk_size)
        var_loss = 0.0
        for t in range(n_rows):
            var_loss += zc_row[t] * zc_row[t]
            grad_z = (
                c_sim * grad_row[t]
                - c_var * gate * 2.0 * zc_row[t] * inv_rows
                + c_cov * lat_row[t] * inv_rows
            )
            grad_row[t] = grad_z * _activation_slope(a_t[j, t], z_t[j, t], activation)
        losses[j, LOSS_SIM] = sim_loss
        losses[j, LOSS_VAR] = -gate * var_loss * inv_rows
        losses[j, LOSS_COV] = cov_loss

        if learn:
            # Hebbian form: input times the neuron's output term.
            grad_w_row = grad_w[j]
            for i in range(grad_w_row.shape[0]):
                grad_w_row[i] = 0.0
            _accumulate_rows(grad_row, x, grad_w_row)
            grad_b = cuda.local.array(1, numba.float32)
            grad_b[0] = 0.0
            for t in range(n_rows):
                grad_b[0] += grad_row[t]
            _optimizer_row(
                weights[j], grad_w_row, weights_first[j], weights_second[j], opt
            )
            _optimizer_row(
                bias[j : j + 1],
                grad_b,
                bias_first[j : j + 1],
                bias_second[j : j + 1],
                opt,
            )


def local_update(
    x,
    a_t,
    z_t,
    zc_t,
    zc,
    lateral,
    mask,
    neurons,
    weights,
    bias,
    weights_first,
    weights_second,
    bias_first,
    bias_second,
    opt,
    activation,
    rule,
    chunk_size,
    lateral_mode,
    c_sim,
    c_var,
    c_cov,
    tau,
    learn,
    losses,
    scratch=None,
):
    """Each neuron's output term, then one optimizer step on its weights.

    For neuron ``j`` and row ``t`` (spec section 2, the "fourfold sum")::

        dL/dz[j,t] = c_sim * dL_sim/dz[j,t]
                   - c_var * relu(tau - var_j) * 2 zc[j,t] / B
                   + c_cov * lat[j,t] / B
        dL/da[j,t] = dL/dz[j,t] * phi'(a[j,t])
        dL/dW[j,:] = sum_t dL/da[j,t] * x[t,:]      dL/db_j = sum_t dL/da[j,t]

    With the lateral matrix, ``lat[j,t] = sum_k L[j,k] zc[t,k]`` (a constant
    to neuron ``j``). With the direct covariance penalty
    ``sum_{k != j} M[j,k] C[j,k]**2`` instead,
    ``lat[j,t] = 2 sum_k (M[j,k] + M[k,j]) C[j,k] zc[t,k]``, its exact gradient.

    Parameters
    ----------
    x : float32 device array (B, n_in)
        The layer's input. Read.
    a_t, z_t, zc_t : float32 device arrays (n, B)
        Pre-activations, activations and centred activations. Read.
    zc : float32 device array (B, n)
        Centred activations, row-major. Read.
    lateral : float32 device array (n, n)
        ``L``. Read (it is updated afterwards by :func:`lateral_update`).
    mask : float32 device array (n, n)
        ``M``: 1 where the covariance is a target, 0 on the diagonal and where
        lateral sparsity removed the entry. Read.
    neurons : float32 device array (n, 3)
        Memory units; ``var`` (already updated for this batch) gates the
        variance term. Read.
    weights, bias : float32 device arrays (n, n_in), (n,)
        Updated in place when ``learn``.
    weights_first, weights_second, bias_first, bias_second : float32
        Optimizer moments of ``weights`` and ``bias`` (second moments may have
        zero columns for SGD). Updated when ``learn``.
    opt : float64 device array (OPT_SIZE,)
        Optimizer hyper-parameters for this step.
    activation, rule, chunk_size, lateral_mode : int
        Codes of the activation, rule (``TRL``/``TRL_S``), chunk length ``S``
        and covariance mode (``LATERAL_MATRIX``/``DIRECT_COVARIANCE``).
    c_sim, c_var, c_cov, tau : float
        Loss coefficients and minimum variance.
    learn : bool
        False computes the loss terms only (a frozen layer).
    losses : float32 device array (n, 4)
        Columns ``LOSS_SIM``, ``LOSS_VAR``, ``LOSS_COV`` of row ``j`` receive
        neuron ``j``'s unweighted loss terms. Written.
    scratch : dict, optional
        Work rows from :func:`scratch_arrays` (``lat``, ``grad_a``,
        ``grad_w``, and ``cov`` in direct mode); overwritten. Allocated for
        this call when not given.

    Notes
    -----
    One thread per neuron: thread ``j`` writes row ``j`` of ``weights``, its
    moments, ``losses`` and the scratch arrays, and ``bias[j]``; it reads other
    neurons only through ``zc``, ``lateral`` and ``mask``, which no thread
    writes.
    """
    if scratch is None:
        scratch = scratch_arrays(weights.shape[0], x.shape[1], x.shape[0])
    local_update_kernel[_grid(weights.shape[0])](
        x,
        a_t,
        z_t,
        zc_t,
        zc,
        lateral,
        mask,
        neurons,
        weights,
        bias,
        weights_first,
        weights_second,
        bias_first,
        bias_second,
        opt,
        activation,
        rule,
        chunk_size,
        lateral_mode,
        c_sim,
        c_var,
        c_cov,
        tau,
        learn,
        losses,
        scratch["lat"],
        scratch["grad_a"],
        scratch["grad_w"],
        scratch["cov"],
    )


@cuda.jit
def lateral_update_kernel(
    zc_t,
    zc,
    mask,
    lateral,
    lateral_first,
    lateral_second,
    opt,
    c_lat,
    learn,
    losses,
    cov,
):
    """Device side of :func:`lateral_update`: row ``j`` of ``L`` toward
    ``M[j] * C[j]``, with ``C[j, k] = sum_t zc[j, t] zc[t, k] / B``.

    Arguments as in :func:`lateral_update`, with ``cov`` (n, n) last: row
    ``j`` holds ``B * C[j]``, then the gradient of ``L[j]``.

    Notes
    -----
    Grid-stride over rows; thread ``j`` writes only row ``j`` of ``lateral``,
    its moments, ``losses`` and ``cov``.
    """
    n = lateral.shape[0]
    n_rows = zc.shape[0]
    inv_rows = np.float32(1.0 / n_rows)
    scale = np.float32(2.0 * c_lat / n)
    for j in range(cuda.grid(1), n, cuda.gridsize(1)):
        cov_row = cov[j]
        for k in range(n):
            cov_row[k] = 0.0
        _accumulate_rows(zc_t[j], zc, cov_row)
        lateral_row = lateral[j]
        loss = 0.0
        for k in range(n):
            d = lateral_row[k] - mask[j, k] * (cov_row[k] * inv_rows)
            loss += d * d
            cov_row[k] = scale * d  # the row now holds the gradient
        losses[j, LOSS_LAT] = loss / n
        if learn:
            _optimizer_row(
                lateral_row, cov_row, lateral_first[j], lateral_second[j], opt
            )


def lateral_update(
    zc_t,
    zc,
    mask,
    lateral,
    lateral_first,
    lateral_second,
    opt,
    c_lat,
    learn,
    losses,
    scratch=None,
):
    """Move the lateral matrix toward the layer's off-diagonal covariance.

    For row ``j``::

        C[j,k]  = sum_t zc[j,t] zc[t,k] / B
        L_lat_j = sum_k (L[j,k] - M[j,k] C[j,k])**2 / n
        dL/dL[j,k] = c_lat * 2 (L[j,k] - M[j,k] C[j,k]) / n

    Parameters
    ----------
    zc_t : float32 device array (n, B)
        Centred activations, neuron-major. Read.
    zc : float32 device array (B, n)
        The same, row-major. Read.
    mask : float32 device array (n, n)
        ``M``, zero on the diagonal and on entries removed by sparsity. Read.
    lateral : float32 device array (n, n)
        ``L``. Updated when ``learn``.
    lateral_first, lateral_second : float32 device arrays
        Optimizer moments of ``lateral``. Updated when ``learn``.
    opt : float64 device array (OPT_SIZE,)
        Optimizer hyper-parameters (the lateral learning rate).
    c_lat : float
        Weight of the lateral loss.
    learn : bool
        False computes the loss only.
    losses : float32 device array (n, 4)
        Column ``LOSS_LAT`` of row ``j`` receives ``L_lat_j``. Written.
    scratch : dict, optional
        Work rows from :func:`scratch_arrays`; only ``cov`` is used
        (overwritten). Allocated for this call when not given.

    Notes
    -----
    One thread per row of ``L``; thread ``j`` writes only row ``j`` of
    ``lateral``, its moments, ``losses`` and ``cov``. Run it after
    :func:`local_update`, which reads the old ``L``.
    """
    n = lateral.shape[0]
    cov = (
        scratch["cov"] if scratch is not None else cuda.device_array((n, n), np.float32)
    )
    lateral_update_kernel[_grid(n)](
        zc_t,
        zc,
        mask,
        lateral,
        lateral_first,
        lateral_second,
        opt,
        c_lat,
        learn,
        losses,
        cov,
    )


@cuda.jit
def optimizer_update_kernel(params, grads, first, second, opt):
    """Device side of :func:`optimizer_update`: element ``i`` gets the update
    of :func:`~trlsim.kernels.scalar.optimizer_row`.

    Grid-stride over elements; thread ``i`` touches only element ``i``.
    """
    size = params.shape[0]
    has_second = second.shape[0] == size
    for i in range(cuda.grid(1), size, cuda.gridsize(1)):
        if has_second:
            _optimizer_row(
                params[i : i + 1],
                grads[i : i + 1],
                first[i : i + 1],
                second[i : i + 1],
                opt,
            )
        else:
            _optimizer_row(
                params[i : i + 1], grads[i : i + 1], first[i : i + 1], second, opt
            )


def optimizer_update(params, grads, first, second, opt):
    """One optimizer step on flat device arrays, element by element.

    The same update as :func:`trlsim.kernels.scalar.optimizer_row`, for
    parameters that are not split by neuron (the linear probe).

    Parameters
    ----------
    params, grads, first : float32 device arrays (N,)
        Parameters (updated), gradient (read), first moment (updated).
    second : float32 device array (N,) or (0,)
        Second moment (Adam; updated) or an empty array (SGD).
    opt : float64 device array (OPT_SIZE,)
        Hyper-parameters for this step.

    Notes
    -----
    One thread per element; thread ``i`` touches only element ``i``.
    """
    optimizer_update_kernel[_grid(params.shape[0])](params, grads, first, second, opt)


@cuda.jit
def transpose_kernel(source, target):
    """Device side of :func:`transpose`: ``target[c, r] = source[r, c]``.

    Grid-stride over the elements of ``source``; each is read once and
    written to its own cell of ``target``.
    """
    n_cols = source.shape[1]
    for e in range(cuda.grid(1), source.shape[0] * n_cols, cuda.gridsize(1)):
        r = e // n_cols
        c = e - r * n_cols
        target[c, r] = source[r, c]


def transpose(source, target):
    """``target[c, r] = source[r, c]``: the device's ``ascontiguousarray(a.T)``.

    Turns neuron-major activations ``(n, B)`` into the row-major ``(B, n)``
    that the next layer (and the sums over other neurons) read. One thread per
    element; ``source`` is read, ``target`` written.
    """
    size = source.shape[0] * source.shape[1]
    transpose_kernel[_grid(size)](source, target)


@cuda.jit
def sum_losses_kernel(losses, sums):
    """Device side of :func:`sum_losses`: ``sums[c] = sum_j losses[j, c]``.

    Grid-stride over columns; each thread sums its column in float64, in
    neuron order, and writes only ``sums[c]``.
    """
    for c in range(cuda.grid(1), losses.shape[1], cuda.gridsize(1)):
        total = np.float64(0.0)
        for j in range(losses.shape[0]):
            total += losses[j, c]
        sums[c] = total


def sum_losses(losses, sums):
    """``sums[c] = sum_j losses[j, c]`` in float64, over neurons in order.

    So a step copies back four numbers per layer, not ``(n, 4)``. ``losses``
    (float32 ``(n, 4)``) is read, ``sums`` (float64 ``(4,)``) written; one
    thread per column, each summing in a fixed order (reproducible).
    """
    sum_losses_kernel[1, losses.shape[1]](losses, sums)
