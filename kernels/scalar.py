"""Per-element arithmetic shared by the compiled kernels.

Everything here is plain scalar math on floats, written once so that the CPU
and CUDA kernels compute the same thing. Functions are compiled with
``numba.njit(inline="always")`` and called from inside the parallel kernels of
:mod:`trlsim.kernels.cpu`; :mod:`trlsim.kernels.cuda` compiles the same plain
functions (each one's ``.py_func``) a second time, as CUDA device functions, so
they must stay within what both targets support: no allocation, no objects.

Codes
-----
Activations and optimizers are passed to kernels as small integers, so that a
kernel is compiled once for all of them:

=========  ==========================================================
``RELU``   ``phi(a) = max(a, 0)``
``TANH``   ``phi(a) = tanh(a)``
``SIGMOID``  ``phi(a) = 1 / (1 + exp(-a))``
``GELU``   ``phi(a) = a * Phi(a)``, with ``Phi`` the normal CDF (exact, erf form)
=========  ==========================================================

Optimizer hyper-parameters travel in one float64 vector ``opt`` laid out as
``opt[OPT_KIND], opt[OPT_STEP_SIZE], ...`` (see the ``OPT_*`` constants), which
:func:`trlsim.optim.kernel_params` fills in for the current step.
"""

import math

import numpy as np
from numba import njit

RELU, TANH, SIGMOID, GELU = 0, 1, 2, 3
ACTIVATION_CODES = {"relu": RELU, "tanh": TANH, "sigmoid": SIGMOID, "gelu": GELU}

ADAM, SGD = 0, 1
OPTIMIZER_CODES = {"adam": ADAM, "sgd": SGD}

# Layout of the optimizer parameter vector.
OPT_KIND = 0  # ADAM or SGD
OPT_STEP_SIZE = 1  # Adam: lr / (1 - beta1**t); SGD: lr
OPT_INV_SQRT_BC2 = 2  # Adam: 1 / sqrt(1 - beta2**t); unused by SGD
OPT_BETA1 = 3  # Adam: beta1; SGD: momentum
OPT_BETA2 = 4  # Adam: beta2
OPT_EPS = 5  # Adam: eps
OPT_WEIGHT_DECAY = 6  # L2 penalty added to the gradient
OPT_SIZE = 7

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@njit(inline="always", cache=True)
def activate(a, activation):
    """Return ``phi(a)`` for the activation code ``activation``."""
    if activation == RELU:
        return a if a > 0.0 else 0.0 * a
    if activation == TANH:
        return math.tanh(a)
    if activation == SIGMOID:
        return 1.0 / (1.0 + math.exp(-a))
    return 0.5 * a * (1.0 + math.erf(a * _INV_SQRT2))


@njit(inline="always", cache=True)
def activation_slope(a, z, activation):
    """Return ``phi'(a)``, given ``a`` and ``z = phi(a)``.

    ReLU's slope at exactly 0 is taken as 0, as in PyTorch.
    """
    if activation == RELU:
        return 1.0 if a > 0.0 else 0.0
    if activation == TANH:
        return 1.0 - z * z
    if activation == SIGMOID:
        return z * (1.0 - z)
    return 0.5 * (1.0 + math.erf(a * _INV_SQRT2)) + a * _INV_SQRT_2PI * math.exp(
        -0.5 * a * a
    )


@njit(inline="always", cache=True)
def optimizer_row(params, grads, first, second, opt):
    """Apply one optimizer step to a row of parameters, in place.

    Adam (``opt[OPT_KIND] == ADAM``), as in PyTorch::

        g <- g + wd * p
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g**2
        p <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

    SGD with momentum (``opt[OPT_KIND] == SGD``)::

        g <- g + wd * p
        m <- momentum * m + g
        p <- p - lr * m

    Parameters
    ----------
    params : 1-D float32 array
        Parameters ``p``, updated in place.
    grads : 1-D float32 array
        Gradient ``g`` of the loss with respect to ``params``; not modified.
    first : 1-D float32 array
        First moment ``m`` (Adam) or momentum buffer (SGD), updated in place.
    second : 1-D float32 array
        Second moment ``v`` (Adam), updated in place; not read by SGD (may
        be any array, even of length 0).
    opt : 1-D float64 array of length ``OPT_SIZE``
        Hyper-parameters for this step, bias corrections included.

    Notes
    -----
    Reads and writes only the given rows: safe to call for different rows
    from different threads.
    """
    # float32 scalars keep the loops in single precision, so they vectorise.
    step = np.float32(opt[OPT_STEP_SIZE])
    beta1 = np.float32(opt[OPT_BETA1])
    decay = np.float32(opt[OPT_WEIGHT_DECAY])
    one = np.float32(1.0)
    if opt[OPT_KIND] == ADAM:
        beta2 = np.float32(opt[OPT_BETA2])
        inv_sqrt_bc2 = np.float32(opt[OPT_INV_SQRT_BC2])
        eps = np.float32(opt[OPT_EPS])
        for i in range(params.shape[0]):
            g = grads[i] + decay * params[i]
            m = beta1 * first[i] + (one - beta1) * g
            v = beta2 * second[i] + (one - beta2) * g * g
            first[i] = m
            second[i] = v
            params[i] -= step * m / (math.sqrt(v) * inv_sqrt_bc2 + eps)
    else:
        for i in range(params.shape[0]):
            m = beta1 * first[i] + grads[i] + decay * params[i]
            first[i] = m
            params[i] -= step * m


@njit(inline="always", cache=True)
def optimizer_scalars(opt):
    """The hyper-parameters of ``opt`` as float32 scalars, for
    :func:`optimizer_element` (single precision keeps its loops vectorised)."""
    f = np.float32
    return (f(opt[OPT_STEP_SIZE]), f(opt[OPT_BETA1]), f(opt[OPT_BETA2]),
            f(opt[OPT_INV_SQRT_BC2]), f(opt[OPT_EPS]), f(opt[OPT_WEIGHT_DECAY]))


@njit(inline="always", cache=True)
def optimizer_element(p, g, m, v, scalars, adam):
    """One optimizer step on a single parameter; returns ``(p, m, v)``.

    The same update as :func:`optimizer_row` (``v`` is returned unchanged by
    SGD), for loops that compute each gradient on the fly instead of holding
    a row of them. ``scalars`` comes from :func:`optimizer_scalars`.
    """
    step, beta1, beta2, inv_sqrt_bc2, eps, decay = scalars
    one = np.float32(1.0)
    g = g + decay * p
    if adam:
        m = beta1 * m + (one - beta1) * g
        v = beta2 * v + (one - beta2) * g * g
        p = p - step * m / (math.sqrt(v) * inv_sqrt_bc2 + eps)
    else:
        m = beta1 * m + g
        p = p - step * m
    return p, m, v


@njit(inline="always", cache=True)
def bias_corrected(base, step, out):
    """Fill ``out`` with ``base`` made ready for optimizer step ``step``.

    ``base`` holds the plain learning rate at ``OPT_STEP_SIZE``; Adam's bias
    corrections ``1 - beta**step`` are applied here, so a compiled loop over
    many steps needs no call back to Python (the same numbers as
    :func:`trlsim.optim.kernel_params`).
    """
    for i in range(OPT_SIZE):
        out[i] = base[i]
    if base[OPT_KIND] == ADAM:
        out[OPT_STEP_SIZE] = base[OPT_STEP_SIZE] / (1.0 - base[OPT_BETA1] ** step)
        out[OPT_INV_SQRT_BC2] = 1.0 / math.sqrt(1.0 - base[OPT_BETA2] ** step)
