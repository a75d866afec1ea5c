"""Offline image-classification task for federated distillation (docs/METHODS.md §6).

Uses scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes, no
download).  Layout:

* the train/test split is stratified and made with a *fixed* seed
  (``SPLIT_SEED``), independent of the run seed, so every run and every method is
  scored on the same test images;
* the public proxy set (unlabelled for clients; labels kept only for measuring the
  filter) is carved from the training pool with the run seed, stratified, and is
  disjoint from every client's data;
* the rest of the training pool is partitioned over clients by ``client_splits``.

Per-client test sets (our choice): a client's test set is every global test image
whose class occurs in that client's training data.  Under IID this is the whole test
set; under weak/strong non-IID the client is scored on its two / one classes, so its
test set "follows its own label distribution" in support (not in proportions: for
Dirichlet splits a class held by a single sample still contributes all of its test
images).  Note that under strong non-IID a one-class model scores 100% on such a
test set, so benchmarks should also report accuracy on the global test set
(``DigitsTask.X_test``), which is what "stays close to IID" is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from distill.partition import PartitionError, partition

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

SPLIT_SEED = 20240601
"""Seed of the train/test split; fixed so the test set never depends on the run seed."""

SPLITS = ("iid", "weak", "strong", "dirichlet")


@dataclass(frozen=True)
class DigitsTask:
    """Digits data laid out for federated distillation.

    Attributes
    ----------
    X_train, y_train : client pool (proxy removed), features in [0, 1].
    X_test, y_test : fixed global test set.
    X_proxy, y_proxy : public proxy set; ``y_proxy`` is for evaluation only.
    train_index, test_index, proxy_index : row indices into ``load_digits()``.
    """

    X_train: FloatArray
    y_train: IntArray
    X_test: FloatArray
    y_test: IntArray
    X_proxy: FloatArray
    y_proxy: IntArray
    train_index: IntArray
    test_index: IntArray
    proxy_index: IntArray

    @property
    def n_classes(self) -> int:
        """Number of classes (10)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


@dataclass(frozen=True)
class ClientData:
    """One client's private training data and its test set (see module docstring)."""

    X: FloatArray
    y: IntArray
    X_test: FloatArray
    y_test: IntArray
    index: IntArray

    @property
    def classes(self) -> IntArray:
        """Sorted classes present in the client's training data."""
        return np.unique(self.y).astype(np.int64)


def load_digits_task(seed: int = 0, test_fraction: float = 0.25, proxy_size: int = 300) -> DigitsTask:
    """Load digits, scale to [0, 1], split into fixed test / seeded proxy / client pool.

    Parameters
    ----------
    seed : int, default 0
        Run seed; selects the proxy set only.
    test_fraction : float, default 0.25
        Fraction of all images in the fixed, stratified test set.
    proxy_size : int, default 300
        Number of training-pool images moved into the proxy set (stratified).

    Returns
    -------
    DigitsTask
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = load_digits()
    X = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    all_idx = np.arange(len(y), dtype=np.int64)
    train_idx, test_idx = train_test_split(all_idx, test_size=test_fraction, stratify=y, random_state=SPLIT_SEED)
    n_classes = len(np.unique(y))
    if not n_classes <= proxy_size <= len(train_idx) - n_classes:
        raise ValueError(f"proxy_size must be in [{n_classes}, {len(train_idx) - n_classes}], got {proxy_size!r}")
    pool_idx, proxy_idx = train_test_split(train_idx, test_size=proxy_size, stratify=y[train_idx], random_state=seed)
    pool_idx = np.sort(pool_idx)
    proxy_idx = np.sort(proxy_idx)
    test_idx = np.sort(test_idx)
    return DigitsTask(
        X_train=X[pool_idx],
        y_train=y[pool_idx],
        X_test=X[test_idx],
        y_test=y[test_idx],
        X_proxy=X[proxy_idx],
        y_proxy=y[proxy_idx],
        train_index=pool_idx.astype(np.int64),
        test_index=test_idx.astype(np.int64),
        proxy_index=proxy_idx.astype(np.int64),
    )


def client_splits(
    task: DigitsTask,
    n_clients: int,
    split: str,
    seed: int,
    alpha: float = 0.5,
) -> list[ClientData]:
    """Partition the client pool and attach per-client test sets.

    Parameters
    ----------
    task : DigitsTask
        Output of :func:`load_digits_task`.
    n_clients : int
        Number of clients (10 in the §6 protocol).
    split : {"iid", "weak", "strong", "dirichlet"}
        ``weak``: client i holds classes i, i+1 mod 10; ``strong``: class i only.
    seed : int
        Seed of the partition (and of within-class shuffling).
    alpha : float, default 0.5
        Dirichlet concentration, used only by ``split="dirichlet"``.

    Returns
    -------
    list of ClientData
        Client test set = global test images of the classes in its training data.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
    rng = np.random.default_rng(seed)
    try:
        if split == "dirichlet":
            parts = partition("dirichlet", task.y_train, n_clients, rng, alpha=alpha)
        else:
            parts = partition(split, task.y_train, n_clients, rng)
    except PartitionError as exc:
        raise ValueError(f"cannot make a {split!r} split for {n_clients} clients: {exc}") from exc
    out: list[ClientData] = []
    for ix in parts:
        y = task.y_train[ix]
        test_mask = np.isin(task.y_test, np.unique(y))
        out.append(
            ClientData(
                X=task.X_train[ix],
                y=y,
                X_test=task.X_test[test_mask],
                y_test=task.y_test[test_mask],
                index=task.train_index[ix],
            )
        )
    return out


@lru_cache(maxsize=4)
def digits_clients(seed: int, proxy_size: int, n_clients: int, split: str, k: int,
                   alpha: float) -> tuple[DigitsTask, tuple[ClientData, ...]]:
    """The task and every client's data; deterministic in its arguments (data.partition §6 protocol).

    ``split = "classes"`` gives client i the classes ``i..i+k−1 mod 10`` (k = 2 weak, k = 1 strong
    non-IID); its test set is the global test images of those classes, as in ``client_splits``.
    """
    task = load_digits_task(seed=seed, proxy_size=proxy_size)
    named = {"iid": "iid", "dirichlet": "dirichlet"}.get(split) or {1: "strong", 2: "weak"}.get(k)
    if named is not None:
        return task, tuple(client_splits(task, n_clients, named, seed=seed, alpha=alpha))
    parts = partition("classes", task.y_train, n_clients, np.random.default_rng(seed), classes_per_client=k)
    out = []
    for ix in parts:
        y = task.y_train[ix]
        mask = np.isin(task.y_test, np.unique(y))
        out.append(ClientData(task.X_train[ix], y, task.X_test[mask], task.y_test[mask], task.train_index[ix]))
    return task, tuple(out)
