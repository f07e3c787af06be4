"""The linear probe: how much a frozen encoder's activations tell about labels.

TRL learns without labels; spec section 5 scores it by a softmax regression
(with bias) trained on the concatenated activations of all layers, with Adam
(lr 1e-4), batches of 64, for as many epochs as the encoder had, and tested on
the held-out images. The probe never changes the network.

Examples
--------
>>> import numpy as np
>>> from trlsim.probe import LinearProbe
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(200, 5)).astype(np.float32)
>>> y = (x[:, 0] > 0).astype(np.int64)
>>> probe = LinearProbe(5, 2, learning_rate=1e-2, batch_size=16, seed=0)
>>> history = probe.fit(x, y, epochs=20)
>>> probe.score(x, y) > 0.9
True
"""

import math
from dataclasses import dataclass, field

import numpy as np

from . import optim
from .kernels.cpu import optimizer_update


class LinearProbe:
    """Softmax regression trained by Adam on fixed features.

    Parameters
    ----------
    n_features, n_classes : int
    learning_rate : float
        Adam's learning rate (betas 0.9, 0.999; eps 1e-8).
    batch_size : int
    seed : int
        Seeds the initial weights and the order of samples in each epoch.
    """

    def __init__(self, n_features, n_classes, learning_rate=1e-4, batch_size=64,
                 seed=0):
        self.n_features = n_features
        self.n_classes = n_classes
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(n_features)
        size = n_classes * (n_features + 1)
        # One flat vector holds W then b, so the optimizer kernel sees one array.
        self._params = self._rng.uniform(-bound, bound, size).astype(np.float32)
        self._first, self._second = optim.moments("adam", (size,))
        self._grads = np.zeros(size, dtype=np.float32)
        self._steps = 0

    @property
    def weights(self):
        """float32 (n_classes, n_features), a view of the parameters."""
        return self._params[: self.n_classes * self.n_features].reshape(
            self.n_classes, self.n_features
        )

    @property
    def bias(self):
        return self._params[self.n_classes * self.n_features :]

    def logits(self, features):
        return np.asarray(features, np.float32) @ self.weights.T + self.bias

    def predict(self, features):
        return np.argmax(self.logits(features), axis=1)

    def score(self, features, labels):
        """Fraction of ``labels`` predicted correctly."""
        return float(np.mean(self.predict(features) == np.asarray(labels)))

    def fit(self, features, labels, epochs, test=None, progress=None):
        """Train for ``epochs`` passes over shuffled ``features``.

        Parameters
        ----------
        features : float32 (N, n_features)
        labels : int (N,)
        epochs : int
        test : tuple (features, labels), optional
            Scored after every epoch, into the history.
        progress : callable, optional
            Called as ``progress(epoch, record)`` after each epoch.

        Returns
        -------
        list of dict
            Per epoch: ``epoch``, ``loss`` (mean cross-entropy over batches),
            ``train_accuracy`` (of the batches as they were seen) and, with
            ``test``, ``test_accuracy``.
        """
        features = np.ascontiguousarray(features, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"probe features must have shape (N, {self.n_features}), "
                f"got {features.shape}"
            )
        if labels.shape != (features.shape[0],):
            raise ValueError(
                f"probe labels must have shape ({features.shape[0]},), "
                f"got {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_classes):
            raise ValueError(f"probe labels must lie in 0..{self.n_classes - 1}")

        n_w = self.n_classes * self.n_features
        grad_w = self._grads[:n_w].reshape(self.n_classes, self.n_features)
        grad_b = self._grads[n_w:]
        history = []
        for epoch in range(epochs):
            order = self._rng.permutation(features.shape[0])
            total_loss, correct, seen = 0.0, 0, 0
            for start in range(0, order.size, self.batch_size):
                rows = order[start : start + self.batch_size]
                x, y = features[rows], labels[rows]
                logits = x @ self.weights.T + self.bias
                logits -= logits.max(axis=1, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=1, keepdims=True)
                picked = p[np.arange(y.size), y]
                total_loss += float(-np.log(np.maximum(picked, 1e-30)).sum())
                correct += int((p.argmax(axis=1) == y).sum())
                seen += y.size

                p[np.arange(y.size), y] -= 1.0
                p /= y.size
                np.matmul(p.T, x, out=grad_w)
                grad_b[:] = p.sum(axis=0)
                self._steps += 1
                opt = optim.kernel_params("adam", self.learning_rate, self._steps)
                optimizer_update(self._params, self._grads, self._first,
                                 self._second, opt)
            record = {
                "epoch": epoch + 1,
                "loss": total_loss / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
            }
            if test is not None:
                record["test_accuracy"] = self.score(*test)
            history.append(record)
            if progress is not None:
                progress(epoch + 1, record)
        return history


@dataclass
class ProbeResult:
    """Accuracy of a linear probe on a network's activations."""

    train_accuracy: float
    test_accuracy: float
    epochs: int
    layers: list
    history: list = field(default_factory=list)

    def to_dict(self):
        return {
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "epochs": self.epochs,
            "layers": list(self.layers),
            "history": self.history,
        }


def evaluate(network, dataset, epochs, layers=None, learning_rate=1e-4,
             batch_size=64, seed=0, progress=None):
    """Fit a linear probe on ``network``'s activations and score it.

    Parameters
    ----------
    network : trlsim.Network
        Frozen during the probe: only ``transform`` is called.
    dataset : trlsim.data.Dataset
        Train split to fit, test split to score.
    epochs : int
    layers : sequence of int, optional
        Layers whose activations are concatenated (all by default).
    learning_rate, batch_size, seed, progress
        As for :class:`LinearProbe`.

    Returns
    -------
    ProbeResult
        ``train_accuracy`` is scored on the whole train split after fitting.
    """
    layers = list(range(len(network.layers))) if layers is None else list(layers)
    train = np.concatenate(network.transform(dataset.train_x, layers), axis=1)
    test = np.concatenate(network.transform(dataset.test_x, layers), axis=1)
    probe = LinearProbe(train.shape[1], dataset.n_classes, learning_rate,
                        batch_size, seed)
    history = probe.fit(train, dataset.train_y, epochs,
                        test=(test, dataset.test_y), progress=progress)
    return ProbeResult(
        train_accuracy=probe.score(train, dataset.train_y),
        test_accuracy=probe.score(test, dataset.test_y),
        epochs=epochs,
        layers=layers,
        history=history,
    )
