"""Shared fixtures: where the real MNIST files are."""

import os
from pathlib import Path

import pytest


def mnist_folder():
    """The MNIST folder: ``$TRLSIM_DATA/mnist`` or ``../shared/data/mnist``."""
    candidates = []
    if os.environ.get("TRLSIM_DATA"):
        root = Path(os.environ["TRLSIM_DATA"])
        candidates += [root / "mnist", root]
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    for folder in candidates:
        if (folder / "train-images-idx3-ubyte.gz").exists():
            return folder
    return None


@pytest.fixture(scope="session")
def mnist_dir():
    folder = mnist_folder()
    if folder is None:
        pytest.skip("MNIST not found: set TRLSIM_DATA to a folder holding mnist/")
    return folder


def small_recorded_config(**record):
    """A run on the bundled digits set that takes a second or two and records
    every field (``record`` overrides keys of its ``[record]`` table)."""
    from trlsim.config import parse_config
    from trlsim.record import FIELDS

    return parse_config(
        {
            "network": {"hidden": [12, 8]},
            "optimizer": {"learning_rate": 1e-3},
            "data": {
                "dataset": "digits",
                "batch_size": 32,
                "chunk_size": 8,
                "train_limit": 320,
                "test_limit": 100,
            },
            "training": {"epochs": 2},
            "probe": {"epochs": 2, "learning_rate": 1e-3},
            "record": {
                "enabled": True,
                "fields": list(FIELDS),
                "every": 2,
                "snapshot_every": 1,
                "probe_samples": 60,
                **record,
            },
        }
    )
