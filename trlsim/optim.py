"""Optimizer hyper-parameters as the compiled kernels take them."""

import math

import numpy as np

from .kernels import scalar


def kernel_params(optimizer, learning_rate, step, betas=(0.9, 0.999), eps=1e-8,
                  momentum=0.9, weight_decay=0.0, corrected=True):
    """Pack the hyper-parameters of optimizer step number ``step`` (from 1).

    Parameters
    ----------
    optimizer : {"adam", "sgd"}
    learning_rate : float
    step : int
        How many updates these parameters will have had after this one; Adam's
        bias corrections ``1 - beta**step`` depend on it.
    betas, eps : Adam's coefficients.
    momentum : float
        SGD's momentum.
    weight_decay : float
        L2 penalty added to the gradient (both optimizers).
    corrected : bool
        False leaves Adam's bias corrections out (``step`` is then ignored),
        for kernels that apply them per step themselves
        (:func:`trlsim.kernels.scalar.bias_corrected`).

    Returns
    -------
    numpy.ndarray
        float64 vector of length ``OPT_SIZE``, laid out as documented in
        :mod:`trlsim.kernels.scalar`.
    """
    if corrected and step < 1:
        raise ValueError(f"optimizer step must be >= 1, got {step}")
    opt = np.zeros(scalar.OPT_SIZE)
    opt[scalar.OPT_WEIGHT_DECAY] = weight_decay
    if optimizer == "adam":
        beta1, beta2 = betas
        opt[scalar.OPT_KIND] = scalar.ADAM
        opt[scalar.OPT_STEP_SIZE] = learning_rate
        opt[scalar.OPT_INV_SQRT_BC2] = 1.0
        if corrected:
            opt[scalar.OPT_STEP_SIZE] /= 1.0 - beta1**step
            opt[scalar.OPT_INV_SQRT_BC2] /= math.sqrt(1.0 - beta2**step)
        opt[scalar.OPT_BETA1] = beta1
        opt[scalar.OPT_BETA2] = beta2
        opt[scalar.OPT_EPS] = eps
    elif optimizer == "sgd":
        opt[scalar.OPT_KIND] = scalar.SGD
        opt[scalar.OPT_STEP_SIZE] = learning_rate
        opt[scalar.OPT_BETA1] = momentum
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
    return opt


def moments(optimizer, shape):
    """Zeroed ``(first, second)`` moment arrays for parameters of ``shape``.

    SGD keeps no second moment: its array has a zero-length last axis, which
    the kernels never read.
    """
    first = np.zeros(shape, dtype=np.float32)
    if optimizer == "adam":
        second = np.zeros(shape, dtype=np.float32)
    else:
        second = np.zeros(tuple(shape[:-1]) + (0,), dtype=np.float32)
    return first, second
