"""CPU kernels of one TRL learning step, compiled by Numba for threads.

A layer's step runs four kernels in order, each an explicit ``prange`` loop
over the layer's neurons ``j`` (TRL paper, section 2; ``TRL_SPEC.md``
sections 2 and 3):

1. :func:`forward`         ``a = W x + b``, ``z = phi(a)``
2. :func:`memory_update`   batch mean and variance into the memory units
3. :func:`local_update`    each neuron's output term, then its weights and bias
4. :func:`lateral_update`  the lateral matrix toward the layer's covariance

Each neuron owns row ``j`` of every matrix it writes (``W``, ``L``, optimizer
moments, ``losses``) and record ``j`` of the memory units, so iterations never
write the same cell and need no locks. Activations are held neuron-major,
``z_t[j, t]`` (shape ``(n, B)``), so a neuron's time series is contiguous;
``zc`` is the same centred activity row-major, ``(B, n)``, for the sums over
other neurons.

Arrays are float32 and C-contiguous; optimizer hyper-parameters come as the
float64 vector described in :mod:`trlsim.kernels.scalar`. All kernels are
cached on disk by Numba, so a new process does not compile them again.
"""

import numpy as np
from numba import njit, prange

from .scalar import (
    ADAM,
    OPT_KIND,
    OPT_STEP_SIZE,
    activate,
    activation_slope,
    bias_corrected,
    optimizer_element,
    optimizer_row,
    optimizer_scalars,
)

# Reassociation lets LLVM vectorise the dot products; NaN and infinity keep
# their IEEE meaning so that a diverging run is still detected.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
PARALLEL = dict(parallel=True, fastmath=FASTMATH, cache=True, nogil=True)

TRL, TRL_S = 0, 1
RULE_CODES = {"trl": TRL, "trl-s": TRL_S}
LATERAL_MATRIX, DIRECT_COVARIANCE = 0, 1
LATERAL_CODES = {"matrix": LATERAL_MATRIX, "direct": DIRECT_COVARIANCE}

# Columns of the per-neuron ``losses`` array.
LOSS_SIM, LOSS_VAR, LOSS_COV, LOSS_LAT = 0, 1, 2, 3
LOSS_TERMS = ("sim", "var", "cov", "lat")


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _dot_rows(vector, rows, out):
    """``out[t] = sum_i vector[i] * rows[t, i]`` for every row ``t``.

    Four rows at a time, so each element of ``vector`` is loaded once per four
    products; the inner loop vectorises over ``i``.
    """
    n_rows, width = rows.shape
    t = 0
    while t + 4 <= n_rows:
        r0, r1, r2, r3 = rows[t], rows[t + 1], rows[t + 2], rows[t + 3]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for i in range(width):
            v = vector[i]
            s0 += v * r0[i]
            s1 += v * r1[i]
            s2 += v * r2[i]
            s3 += v * r3[i]
        out[t], out[t + 1], out[t + 2], out[t + 3] = s0, s1, s2, s3
        t += 4
    for t in range(t, n_rows):
        row = rows[t]
        s = np.float32(0.0)
        for i in range(width):
            s += vector[i] * row[i]
        out[t] = s


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _accumulate_rows(weights, rows, out):
    """``out[i] += sum_t weights[t] * rows[t, i]``, four rows at a time."""
    n_rows, width = rows.shape
    t = 0
    while t + 4 <= n_rows:
        r0, r1, r2, r3 = rows[t], rows[t + 1], rows[t + 2], rows[t + 3]
        c0, c1, c2, c3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
        for i in range(width):
            out[i] += c0 * r0[i] + c1 * r1[i] + c2 * r2[i] + c3 * r3[i]
        t += 4
    for t in range(t, n_rows):
        row = rows[t]
        c = weights[t]
        for i in range(width):
            out[i] += c * row[i]


@njit(**PARALLEL)
def forward(x, weights, bias, activation, a_t, z_t):
    """Forward pass of one layer, neuron by neuron.

    ``a[j, t] = sum_i W[j, i] * x[t, i] + b[j]`` and ``z[j, t] = phi(a[j, t])``.

    Parameters
    ----------
    x : float32 array (B, n_in)
        Input rows, one per stream position ``t``. Read.
    weights : float32 array (n, n_in)
        ``W``. Read.
    bias : float32 array (n,)
        ``b``. Read.
    activation : int
        Activation code (:data:`trlsim.kernels.scalar.ACTIVATION_CODES`).
    a_t, z_t : float32 arrays (n, B)
        Pre-activations and activations, neuron-major. Written.

    Notes
    -----
    Parallel over neurons; each iteration writes only row ``j`` of ``a_t`` and
    ``z_t``.
    """
    for j in prange(weights.shape[0]):
        a_row = a_t[j]
        _dot_rows(weights[j], x, a_row)
        for t in range(a_row.shape[0]):
            a_row[t] += bias[j]
            z_t[j, t] = activate(a_row[t], activation)


@njit(**PARALLEL)
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
    z_t : float32 array (n, B)
        Activations, neuron-major. Read.
    neurons : structured array (n,) of ``MEMORY_DTYPE``
        Memory units ``mean``, ``var``, ``prev``. Updated.
    var_momentum : float
        ``k``, the momentum of the running variance (0.9 in the paper).
    zc_t : float32 array (n, B)
        Centred activations. Written.

    Notes
    -----
    Parallel over neurons; iteration ``j`` touches only record ``j`` and row
    ``j``.
    """
    n_rows = z_t.shape[1]
    keep = np.float32(var_momentum)
    for j in prange(z_t.shape[0]):
        row = z_t[j]
        total = 0.0
        for t in range(n_rows):
            total += row[t]
        mean = total / n_rows
        spread = 0.0
        for t in range(n_rows):
            centred = row[t] - mean
            zc_t[j, t] = centred
            spread += centred * centred
        neurons[j].mean = mean
        neurons[j].var = keep * neurons[j].var + (1.0 - keep) * (spread / n_rows)
        neurons[j].prev = row[n_rows - 1]


@njit(inline="always", cache=True)
def _invariance_gradient(z_row, grad, rule, chunk_size):
    """Write ``dL_sim/dz`` of one neuron into ``grad``; return ``L_sim``.

    TRL: pairs ``(t-1, t)`` inside chunks of ``chunk_size`` rows, mean over the
    pairs of a chunk then over chunks, gradient to both members. TRL-S: all
    ``B - 1`` consecutive pairs, the earlier member detached.
    """
    n_rows = z_row.shape[0]
    loss = 0.0
    if rule == TRL:
        n_chunks = n_rows // chunk_size
        scale = 1.0 / (n_chunks * (chunk_size - 1))
        for t in range(n_rows):
            grad[t] = 0.0
        for t in range(n_rows):
            if t % chunk_size != 0:
                d = z_row[t] - z_row[t - 1]
                loss += d * d
                grad[t] += 2.0 * scale * d
                grad[t - 1] -= 2.0 * scale * d
        return loss * scale
    scale = 1.0 / (n_rows - 1)
    grad[0] = 0.0
    for t in range(1, n_rows):
        d = z_row[t] - z_row[t - 1]
        loss += d * d
        grad[t] = 2.0 * scale * d
    return loss * scale


@njit(**PARALLEL)
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
    x : float32 (B, n_in)
        The layer's input. Read.
    a_t, z_t, zc_t : float32 (n, B)
        Pre-activations, activations and centred activations. Read.
    zc : float32 (B, n)
        Centred activations, row-major. Read.
    lateral : float32 (n, n)
        ``L``. Read (it is updated afterwards by :func:`lateral_update`).
    mask : float32 (n, n)
        ``M``: 1 where the covariance is a target, 0 on the diagonal and where
        lateral sparsity removed the entry. Read.
    neurons : MEMORY_DTYPE (n,)
        Memory units; ``var`` (already updated for this batch) gates the
        variance term. Read.
    weights, bias : float32 (n, n_in), (n,)
        Updated in place when ``learn``.
    weights_first, weights_second, bias_first, bias_second : float32
        Optimizer moments of ``weights`` and ``bias`` (second moments may have
        zero columns for SGD). Updated when ``learn``.
    opt : float64 (OPT_SIZE,)
        Optimizer hyper-parameters for this step.
    activation, rule, chunk_size, lateral_mode : int
        Codes of the activation, rule (``TRL``/``TRL_S``), chunk length ``S``
        and covariance mode (``LATERAL_MATRIX``/``DIRECT_COVARIANCE``).
    c_sim, c_var, c_cov, tau : float
        Loss coefficients and minimum variance.
    learn : bool
        False computes the loss terms only (a frozen layer).
    losses : float32 (n, 4)
        Columns ``LOSS_SIM``, ``LOSS_VAR``, ``LOSS_COV`` of row ``j`` receive
        neuron ``j``'s unweighted loss terms. Written.

    Notes
    -----
    Parallel over neurons: iteration ``j`` writes row ``j`` of ``weights``,
    its moments and ``losses``, and ``bias[j]``; it reads other neurons only
    through ``zc``, ``lateral`` and ``mask``, which no iteration writes.
    """
    n_rows = x.shape[0]
    n_in = x.shape[1]
    n = weights.shape[0]
    inv_rows = np.float32(1.0 / n_rows)
    for j in prange(n):
        zc_row = zc_t[j]
        gate = max(tau - neurons[j].var, 0.0)

        # Lateral signal: how much neuron j moves with the others.
        lat = np.empty(n_rows, dtype=np.float32)
        if lateral_mode == LATERAL_MATRIX:
            _dot_rows(lateral[j], zc, lat)
            cov_loss = 0.0
            for t in range(n_rows):
                cov_loss += zc_row[t] * lat[t]
            cov_loss *= inv_rows
        else:
            cov_row = np.zeros(n, dtype=np.float32)
            _accumulate_rows(zc_row * inv_rows, zc, cov_row)
            cov_loss = 0.0
            for k in range(n):
                cov_loss += mask[j, k] * cov_row[k] * cov_row[k]
                cov_row[k] *= 2.0 * (mask[j, k] + mask[k, j])
            _dot_rows(cov_row, zc, lat)

        # The fourfold sum, through the activation's slope.
        grad_a = np.empty(n_rows, dtype=np.float32)
        sim_loss = _invariance_gradient(z_t[j], grad_a, rule, chunk_size)
        var_loss = 0.0
        for t in range(n_rows):
            var_loss += zc_row[t] * zc_row[t]
            grad_z = (
                c_sim * grad_a[t]
                - c_var * gate * 2.0 * zc_row[t] * inv_rows
                + c_cov * lat[t] * inv_rows
            )
            grad_a[t] = grad_z * activation_slope(a_t[j, t], z_t[j, t], activation)
        losses[j, LOSS_SIM] = sim_loss
        losses[j, LOSS_VAR] = -gate * var_loss * inv_rows
        losses[j, LOSS_COV] = cov_loss

        if learn:
            # Hebbian form: input times the neuron's output term.
            grad_w = np.zeros(n_in, dtype=np.float32)
            _accumulate_rows(grad_a, x, grad_w)
            grad_b = np.zeros(1, dtype=np.float32)
            for t in range(n_rows):
                grad_b[0] += grad_a[t]
            optimizer_row(weights[j], grad_w, weights_first[j], weights_second[j], opt)
            optimizer_row(
                bias[j : j + 1],
                grad_b,
                bias_first[j : j + 1],
                bias_second[j : j + 1],
                opt,
            )


@njit(**PARALLEL)
def lateral_update(zc_t, zc, mask, lateral, lateral_first, lateral_second, opt,
                   c_lat, learn, losses):
    """Move the lateral matrix toward the layer's off-diagonal covariance.

    For row ``j``::

        C[j,k]  = sum_t zc[j,t] zc[t,k] / B
        L_lat_j = sum_k (L[j,k] - M[j,k] C[j,k])**2 / n
        dL/dL[j,k] = c_lat * 2 (L[j,k] - M[j,k] C[j,k]) / n

    Parameters
    ----------
    zc_t : float32 (n, B)
        Centred activations, neuron-major. Read.
    zc : float32 (B, n)
        The same, row-major. Read.
    mask : float32 (n, n)
        ``M``, zero on the diagonal and on entries removed by sparsity. Read.
    lateral : float32 (n, n)
        ``L``. Updated when ``learn``.
    lateral_first, lateral_second : float32
        Optimizer moments of ``lateral``. Updated when ``learn``.
    opt : float64 (OPT_SIZE,)
        Optimizer hyper-parameters (the lateral learning rate).
    c_lat : float
        Weight of the lateral loss.
    learn : bool
        False computes the loss only.
    losses : float32 (n, 4)
        Column ``LOSS_LAT`` of row ``j`` receives ``L_lat_j``. Written.

    Notes
    -----
    Parallel over rows of ``L``; iteration ``j`` writes only row ``j``. Run it
    after :func:`local_update`, which reads the old ``L``.
    """
    n = lateral.shape[0]
    n_rows = zc.shape[0]
    inv_rows = np.float32(1.0 / n_rows)
    scale = np.float32(2.0 * c_lat / n)
    for j in prange(n):
        cov_row = np.zeros(n, dtype=np.float32)
        _accumulate_rows(zc_t[j] * inv_rows, zc, cov_row)
        lateral_row = lateral[j]
        loss = 0.0
        for k in range(n):
            d = lateral_row[k] - mask[j, k] * cov_row[k]
            loss += d * d
            cov_row[k] = scale * d  # the buffer now holds the gradient
        losses[j, LOSS_LAT] = loss / n
        if learn:
            optimizer_row(
                lateral_row, cov_row, lateral_first[j], lateral_second[j], opt
            )


@njit(**PARALLEL)
def optimizer_update(params, grads, first, second, opt):
    """One optimizer step on flat arrays, in parallel blocks.

    The same update as :func:`trlsim.kernels.scalar.optimizer_row`, for
    parameters that are not split by neuron (the linear probe).

    Parameters
    ----------
    params, grads, first : float32 (N,)
        Parameters (updated), gradient (read), first moment (updated).
    second : float32 (N,) or (0,)
        Second moment (Adam; updated) or an empty array (SGD).
    opt : float64 (OPT_SIZE,)
        Hyper-parameters for this step.
    """
    size = params.shape[0]
    block = 4096
    n_blocks = (size + block - 1) // block
    has_second = second.shape[0] == size
    for b in prange(n_blocks):
        lo = b * block
        hi = min(lo + block, size)
        if has_second:
            optimizer_row(params[lo:hi], grads[lo:hi], first[lo:hi], second[lo:hi], opt)
        else:
            optimizer_row(params[lo:hi], grads[lo:hi], first[lo:hi], second, opt)


# Online mode (spec section 7): one sample per step.
_ONE = np.ones(1, dtype=np.float32)


@njit(inline="always", fastmath=FASTMATH, cache=True)
def _rank_one_step(params, first, second, x, g, scalars, adam):
    """Optimizer step on ``params`` for the gradient ``g * x``, computed on the
    fly (one sample's Hebbian update needs no gradient buffer)."""
    zero = np.float32(0.0)
    if adam:
        for i in range(params.shape[0]):
            params[i], first[i], second[i] = optimizer_element(
                params[i], g * x[i], first[i], second[i], scalars, True)
    else:
        for i in range(params.shape[0]):
            params[i], first[i], _ = optimizer_element(
                params[i], g * x[i], first[i], zero, scalars, False)


LATERAL_GRADIENT, LATERAL_HEBBIAN = 0, 1
ONLINE_LATERAL_CODES = {"gradient": LATERAL_GRADIENT, "hebbian": LATERAL_HEBBIAN}


@njit(**PARALLEL)
def online_update(
    x_seq,
    starts,
    weights,
    bias,
    lateral,
    mask,
    neurons,
    weights_first,
    weights_second,
    bias_first,
    bias_second,
    lateral_first,
    lateral_second,
    covariance,
    last_zc,
    opt_base,
    lateral_opt_base,
    first_step,
    activation,
    lateral_rule,
    shifted,
    skip_starts,
    c_sim,
    c_var,
    c_cov,
    c_lat,
    tau,
    mean_momentum,
    var_momentum,
    cov_momentum,
    learn,
    z_seq,
    losses,
):
    """Learn from ``T`` samples one at a time, memory units as leaky integrators.

    For each sample ``x = x_seq[t]`` in order, every neuron ``j``::

        z_j    = phi(W[j] . x + b_j)
        mean_j <- bm * mean_j + (1 - bm) * z_j
        var_j  <- bv * var_j  + (1 - bv) * (z_j - mean_j)**2
        zc_j   = z_j - mean_j
        lat_j  = sum_k L[j,k] * y_k     (y = zc, or the previous sample's zc
                                         when ``shifted``)
        dL/dz_j = 2 c_sim (z_j - prev_j)            (0 at a segment start
                                                     when ``skip_starts``)
                - 2 c_var relu(tau - var_j) zc_j + c_cov lat_j
        W[j], b_j: one optimizer step on dL/dz_j * phi'(a_j) * (x, 1)
        prev_j <- z_j

    and the lateral matrix follows the covariance, either by gradient
    (``LATERAL_GRADIENT``)::

        C[j,k] <- bc * C[j,k] + (1 - bc) * zc_j zc_k
        L[j,k]: one optimizer step on c_lat * 2 (L[j,k] - M[j,k] C[j,k]) / n

    or by the leaky Hebbian rule (``LATERAL_HEBBIAN``), with ``eta`` the
    lateral learning rate::

        L[j,k] <- L[j,k] + eta * (M[j,k] zc_j zc_k - L[j,k])

    Parameters
    ----------
    x_seq : float32 (T, n_in)
        The samples, in stream order. Read.
    starts : bool (T,)
        True where a new segment of the stream begins. Read.
    weights, bias, lateral : float32
        ``W`` (n, n_in), ``b`` (n,), ``L`` (n, n). Updated when ``learn``.
    mask : float32 (n, n)
        ``M``, zero on the diagonal. Read.
    neurons : MEMORY_DTYPE (n,)
        Memory units ``mean``, ``var``, ``prev``. Updated.
    weights_first ... lateral_second : float32
        Optimizer moments (second moments may have zero length for SGD).
    covariance : float32 (n, n)
        Leaky covariance estimate ``C`` (gradient rule; untouched by the
        Hebbian one). Updated.
    last_zc : float32 (n,)
        Centred activations of the sample before ``x_seq[0]``; on return,
        those of the last sample. Updated.
    opt_base, lateral_opt_base : float64 (OPT_SIZE,)
        Optimizer hyper-parameters without bias correction
        (:func:`trlsim.optim.kernel_params` with ``corrected=False``).
    first_step : int
        Optimizer step number of the first sample (bias corrections).
    activation, lateral_rule : int
        Activation code; ``LATERAL_GRADIENT`` or ``LATERAL_HEBBIAN``.
    shifted, skip_starts, learn : bool
    c_sim, c_var, c_cov, c_lat, tau : float
    mean_momentum, var_momentum, cov_momentum : float
        ``bm``, ``bv``, ``bc``.
    z_seq : float32 (T, n)
        Activations of each sample, the next layer's input. Written.
    losses : float32 (n, 4)
        Per neuron, the sums over the ``T`` samples of the loss terms
        ``sim``, ``var``, ``cov``, ``lat``. Added to.

    Notes
    -----
    Samples run in order; within a sample, three parallel loops over neurons
    (forward and memory units; output term and weights; lateral row), each
    writing only row ``j``. The result does not depend on the number of
    threads.
    """
    n_samples = x_seq.shape[0]
    n_in = x_seq.shape[1]
    n = weights.shape[0]
    a = np.empty(n, dtype=np.float32)
    z = np.empty(n, dtype=np.float32)
    zc = np.empty(n, dtype=np.float32)
    opt = np.empty_like(opt_base)
    lateral_opt = np.empty_like(lateral_opt_base)
    keep_mean = np.float32(mean_momentum)
    keep_var = np.float32(var_momentum)
    keep_cov = np.float32(cov_momentum)
    eta = np.float32(lateral_opt_base[OPT_STEP_SIZE])
    adam = opt_base[OPT_KIND] == ADAM
    for t in range(n_samples):
        x = x_seq[t]
        bias_corrected(opt_base, first_step + t, opt)
        bias_corrected(lateral_opt_base, first_step + t, lateral_opt)
        scalars = optimizer_scalars(opt)
        lateral_scalars = optimizer_scalars(lateral_opt)

        for j in prange(n):
            w = weights[j]
            s = np.float32(0.0)
            for i in range(n_in):
                s += w[i] * x[i]
            s += bias[j]
            a[j] = s
            zj = activate(s, activation)
            z[j] = zj
            mean = keep_mean * neurons[j].mean + (1 - keep_mean) * zj
            centred = zj - mean
            neurons[j].mean = mean
            neurons[j].var = keep_var * neurons[j].var + (1 - keep_var) * (
                centred * centred)
            zc[j] = centred

        for j in prange(n):
            source = last_zc if shifted else zc
            lateral_row = lateral[j]
            lat = np.float32(0.0)
            for k in range(n):
                lat += lateral_row[k] * source[k]
            diff = z[j] - neurons[j].prev
            if skip_starts and starts[t]:
                diff = 0.0
            gate = max(tau - neurons[j].var, 0.0)
            losses[j, LOSS_SIM] += diff * diff
            losses[j, LOSS_VAR] += -gate * zc[j] * zc[j]
            losses[j, LOSS_COV] += zc[j] * lat
            grad = (2.0 * c_sim * diff - 2.0 * c_var * gate * zc[j]
                    + c_cov * lat) * activation_slope(a[j], z[j], activation)
            neurons[j].prev = z[j]
            if learn:
                g = np.float32(grad)
                _rank_one_step(weights[j], weights_first[j], weights_second[j], x,
                               g, scalars, adam)
                _rank_one_step(bias[j : j + 1], bias_first[j : j + 1],
                               bias_second[j : j + 1], _ONE, g, scalars, adam)

        scale = np.float32(2.0 * c_lat / n)
        for j in prange(n):
            lateral_row = lateral[j]
            mask_row = mask[j]
            loss = 0.0
            if lateral_rule == LATERAL_GRADIENT:
                cov_row = covariance[j]
                first = lateral_first[j]
                second = lateral_second[j]
                zero = np.float32(0.0)
                for k in range(n):
                    c = keep_cov * cov_row[k] + (1 - keep_cov) * zc[j] * zc[k]
                    cov_row[k] = c
                    d = lateral_row[k] - mask_row[k] * c
                    loss += d * d
                    if learn and adam:
                        lateral_row[k], first[k], second[k] = optimizer_element(
                            lateral_row[k], scale * d, first[k], second[k],
                            lateral_scalars, True)
                    elif learn:
                        lateral_row[k], first[k], _ = optimizer_element(
                            lateral_row[k], scale * d, first[k], zero,
                            lateral_scalars, False)
            else:
                for k in range(n):
                    target = mask_row[k] * zc[j] * zc[k]
                    d = lateral_row[k] - target
                    loss += d * d
                    if learn:
                        lateral_row[k] -= eta * d
            losses[j, LOSS_LAT] += loss / n

        for j in range(n):
            last_zc[j] = zc[j]
            z_seq[t, j] = z[j]
