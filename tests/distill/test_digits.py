"""Digits task: fixed test split, proxy disjoint from clients, per-client test sets."""

from __future__ import annotations

import numpy as np
import pytest

from distill.classifier import accuracy, make_classifier, predict_logits, train_distill_epochs, train_epochs
from distill.digits import client_splits, load_digits_task
from distill.fd import aggregate_soft_labels, client_soft_labels, sum_client_uploads


def test_split_fixed_across_seeds_and_proxy_disjoint() -> None:
    t0 = load_digits_task(seed=0)
    t1 = load_digits_task(seed=1)
    assert np.array_equal(t0.test_index, t1.test_index)
    assert not np.array_equal(t0.proxy_index, t1.proxy_index)
    assert len(t0.proxy_index) == 300
    assert t0.X_train.min() >= 0.0 and t0.X_train.max() <= 1.0
    assert t0.n_classes == 10
    for t in (t0, t1):
        sets = [
            set(t.train_index.tolist()),
            set(t.test_index.tolist()),
            set(t.proxy_index.tolist()),
        ]
        assert sum(len(s) for s in sets) == 1797
        assert len(set().union(*sets)) == 1797
        # Stratified proxy: every class present.
        assert set(t.y_proxy.tolist()) == set(range(10))


@pytest.mark.parametrize("split", ["iid", "weak", "strong", "dirichlet"])
def test_client_splits_cover_pool_and_avoid_proxy(split: str) -> None:
    task = load_digits_task(seed=0)
    clients = client_splits(task, 10, split, seed=4)
    idx = np.concatenate([c.index for c in clients])
    assert np.array_equal(np.sort(idx), task.train_index)
    assert not set(idx.tolist()) & set(task.proxy_index.tolist())
    for i, c in enumerate(clients):
        assert set(c.y_test.tolist()) == set(c.classes.tolist())
        assert len(c.y_test) == int(np.isin(task.y_test, c.classes).sum())
        if split == "strong":
            assert c.classes.tolist() == [i]
        if split == "weak":
            assert set(c.classes.tolist()) == {i, (i + 1) % 10}
    again = client_splits(task, 10, split, seed=4)
    assert all(np.array_equal(a.index, b.index) for a, b in zip(clients, again))


def test_client_splits_bad_split() -> None:
    with pytest.raises(ValueError, match="allowed"):
        client_splits(load_digits_task(), 10, "pathological", seed=0)


def test_classifier_learns_digits_centrally() -> None:
    task = load_digits_task(seed=0)
    model = make_classifier(hidden=64, seed=0)
    train_epochs(
        model,
        task.X_train,
        task.y_train,
        epochs=5,
        lr=1e-2,
        batch_size=32,
        rng=np.random.default_rng(0),
    )
    assert accuracy(model, task.X_test, task.y_test) > 0.85


def test_make_classifier_seeded() -> None:
    a, b = make_classifier(seed=3), make_classifier(seed=3)
    assert all(np.array_equal(p.detach().numpy(), q.detach().numpy()) for p, q in zip(a.parameters(), b.parameters()))


def test_distillation_on_proxy_transfers_teacher_knowledge() -> None:
    """A one-class client learns the other classes from soft labels on the proxy set (§6 loop)."""
    task = load_digits_task(seed=0)
    rng = np.random.default_rng(0)
    teacher = make_classifier(seed=1)
    train_epochs(teacher, task.X_train, task.y_train, epochs=4, lr=1e-2, batch_size=64, rng=rng)
    logits = predict_logits(teacher, task.X_proxy)
    labels, votes = client_soft_labels(logits, np.ones(len(logits), bool), temperature=2.0)
    targets, kept = aggregate_soft_labels(*sum_client_uploads([labels], [votes]))
    one_class = task.y_train == 3
    student = make_classifier(seed=2)
    train_distill_epochs(
        student,
        task.X_train[one_class],
        task.y_train[one_class],
        task.X_proxy[kept],
        targets,
        epochs=8,
        lr=1e-2,
        batch_size=32,
        rng=rng,
        mu=1.0,
        temperature=2.0,
    )
    assert accuracy(student, task.X_test, task.y_test) > 0.7
