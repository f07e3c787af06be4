"""trlsim: a neuron-level simulator of Temporal Regularized Learning.

Main entry points: :func:`load_config`, :class:`Network` (``step``,
``transform``, ``layers``), :class:`Stream`, :class:`Trainer`,
:func:`load_dataset` and :func:`trlsim.probe.evaluate`.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from .config import Config, ConfigError, load_config  # noqa: E402
from .data import DataError, Dataset, load_dataset  # noqa: E402
from .network import MEMORY_DTYPE, Layer, Network  # noqa: E402
from .probe import LinearProbe, evaluate  # noqa: E402
from .streams import Stream  # noqa: E402
from .train import Trainer, TrainingDiverged  # noqa: E402
from .record import Recorder, TraceError  # noqa: E402
from .trace import Trace, open_trace  # noqa: E402

__all__ = [
    "Config", "ConfigError", "DataError", "Dataset", "Layer", "LinearProbe",
    "MEMORY_DTYPE", "Network", "Stream", "Trainer", "TrainingDiverged",
    "evaluate", "load_config", "load_dataset", "Recorder", "TraceError", "Trace",
    "open_trace",
]
