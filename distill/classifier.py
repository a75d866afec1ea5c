"""Small MLP classifier and plain training loops for classification FD (docs/METHODS.md §6).

Kept deliberately plain (Adam, no dropout, no DP): the DP-SGD variant is built on
top with Opacus elsewhere.  All randomness comes from explicit seeds / generators.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from distill.fd import distillation_loss


class MLPClassifier(nn.Module):
    """``n_features → hidden → n_classes`` MLP with one ReLU hidden layer."""

    def __init__(self, n_features: int = 64, hidden: int = 64, n_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_features, hidden)
        self.fc2 = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (batch, n_classes)."""
        return self.fc2(torch.relu(self.fc1(x)))


def make_classifier(hidden: int = 64, seed: int = 0, n_features: int = 64, n_classes: int = 10) -> MLPClassifier:
    """Build an :class:`MLPClassifier` with weights initialised from ``seed``.

    Parameters
    ----------
    hidden : int, default 64
        Hidden width.
    seed : int, default 0
        Seed of the weight initialisation (does not touch the global torch RNG).
    n_features, n_classes : int
        Input and output sizes (64 and 10 for digits).
    """
    if hidden < 1 or n_features < 1 or n_classes < 2:
        raise ValueError(f"need hidden >= 1, n_features >= 1, n_classes >= 2; got {hidden}, {n_features}, {n_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPClassifier(n_features, hidden, n_classes)
    return model


def _as_tensor(X: npt.ArrayLike) -> torch.Tensor:
    return torch.as_tensor(np.asarray(X, dtype=np.float32))


def _check_xy(X: npt.ArrayLike, y: npt.ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    Xt = _as_tensor(X)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    if Xt.ndim != 2 or yt.ndim != 1 or len(Xt) != len(yt):
        raise ValueError(f"need X of shape (n, d) and y of shape (n,), got {tuple(Xt.shape)}, {tuple(yt.shape)}")
    return Xt, yt


def train_epochs(
    model: nn.Module,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
) -> float:
    """Train with cross-entropy and Adam for ``epochs`` shuffled passes.

    Returns
    -------
    float
        Mean training loss over the last epoch.
    """
    Xt, yt = _check_xy(X, y)
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    last = float("nan")
    for _ in range(epochs):
        perm = torch.as_tensor(rng.permutation(len(yt)))
        total = 0.0
        for start in range(0, len(yt), batch_size):
            b = perm[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(Xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        last = total / max(len(yt), 1)
    return last


def train_distill_epochs(
    model: nn.Module,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    X_proxy: npt.ArrayLike,
    proxy_targets: npt.ArrayLike,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
    mu: float = 1.0,
    temperature: float = 1.0,
) -> float:
    """Local FD step: CE on private batches + μ·τ²·KL on voted proxy batches (§6).

    Each optimiser step pairs one private minibatch with one proxy minibatch; an
    epoch is ``max`` of the two batch counts (the shorter stream is re-shuffled and
    cycled), so both sets are seen at least once per epoch.  The loss is
    :func:`distill.fd.distillation_loss`.

    Parameters
    ----------
    X, y : private data.
    X_proxy : (P', d) proxy samples that received at least one vote.
    proxy_targets : (P', C) aggregated soft labels (rows sum to 1).
    mu, temperature : weight μ and temperature τ of the distillation term.

    Returns
    -------
    float
        Mean total loss over the last epoch.
    """
    Xt, yt = _check_xy(X, y)
    Xp = _as_tensor(X_proxy)
    Tp = _as_tensor(proxy_targets)
    if Xp.ndim != 2 or Tp.ndim != 2 or len(Xp) != len(Tp):
        raise ValueError(f"X_proxy (P, d) and proxy_targets (P, C) disagree: {tuple(Xp.shape)}, {tuple(Tp.shape)}")
    if len(Xp) == 0:
        return train_epochs(model, X, y, epochs, lr, batch_size, rng)
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n_steps = max(math.ceil(len(yt) / batch_size), math.ceil(len(Xp) / batch_size))

    def batches(n: int) -> list[torch.Tensor]:
        # Enough shuffled passes to cover n_steps batches of this stream.
        idx: list[torch.Tensor] = []
        while len(idx) < n_steps:
            perm = torch.as_tensor(rng.permutation(n))
            idx.extend(perm[s : s + batch_size] for s in range(0, n, batch_size))
        return idx[:n_steps]

    last = float("nan")
    for _ in range(epochs):
        total = 0.0
        for bp, bq in zip(batches(len(yt)), batches(len(Xp))):
            parts = distillation_loss(
                model(Xt[bp]),
                yt[bp],
                model(Xp[bq]),
                Tp[bq],
                mu=mu,
                temperature=temperature,
            )
            opt.zero_grad()
            parts.total.backward()
            opt.step()
            total += parts.total.item()
        last = total / n_steps
    return last


@torch.no_grad()
def predict_logits(model: nn.Module, X: npt.ArrayLike, batch_size: int = 4096) -> npt.NDArray[np.float32]:
    """Logits of ``model`` on ``X`` (eval mode, no gradients), shape (n, C)."""
    Xt = _as_tensor(X)
    was_training = model.training
    model.eval()
    out = [model(Xt[s : s + batch_size]) for s in range(0, len(Xt), batch_size)]
    model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def accuracy(model: nn.Module, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Fraction of ``X`` whose arg-max logit equals ``y``."""
    yv = np.asarray(y, dtype=np.int64)
    if len(yv) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float(np.mean(predict_logits(model, X).argmax(axis=1) == yv))
