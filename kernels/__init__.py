"""Compiled kernels of trlsim, installed as ``trlsim.kernels``."""
