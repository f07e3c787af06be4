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
