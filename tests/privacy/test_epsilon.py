"""Empirical ε lower bounds: Clopper–Pearson and one-run audits (docs/METHODS.md §8)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from privacy.audit.epsilon import (
    best_attack_epsilon,
    clopper_pearson_epsilon,
    one_run_epsilon,
    one_run_guesses,
    one_run_p_value,
)


def test_clopper_pearson_spec_vector() -> None:
    assert clopper_pearson_epsilon(500, 500, 5, 995, alpha=0.05) == pytest.approx(3.696, abs=1e-3)


def test_clopper_pearson_monotone() -> None:
    base = clopper_pearson_epsilon(500, 500, 5, 995)
    assert clopper_pearson_epsilon(600, 400, 5, 995) > base
    assert clopper_pearson_epsilon(500, 500, 20, 980) < base
    previous = -1.0
    for tp in range(0, 1001, 50):
        value = clopper_pearson_epsilon(tp, 1000 - tp, 5, 995)
        assert value >= previous
        previous = value
    previous = np.inf
    for fp in range(0, 501, 25):
        value = clopper_pearson_epsilon(500, 500, fp, 1000 - fp)
        assert value <= previous
        previous = value


def test_clopper_pearson_delta_and_confidence() -> None:
    base = clopper_pearson_epsilon(500, 500, 5, 995)
    assert clopper_pearson_epsilon(500, 500, 5, 995, delta=1e-2) < base
    assert clopper_pearson_epsilon(500, 500, 5, 995, alpha=0.01) < base
    assert clopper_pearson_epsilon(500, 500, 500, 500) == 0.0
    # The second ratio (TNR/FNR) carries an attack that flags few members with no false positive.
    assert clopper_pearson_epsilon(1000, 0, 500, 500) > 0.0
    with pytest.raises(ValueError):
        clopper_pearson_epsilon(0, 0, 5, 995)
    with pytest.raises(ValueError):
        clopper_pearson_epsilon(1, -1, 5, 995)


def test_best_attack_epsilon() -> None:
    rng = np.random.default_rng(0)
    members = rng.uniform(2, 3, 1000)
    nonmembers = rng.uniform(0, 1, 1000)
    eps, threshold, counts = best_attack_epsilon(members, nonmembers)
    assert counts.tp + counts.fn == 1000 and counts.fp + counts.tn == 1000
    assert 1.0 <= threshold <= 3.0
    # Bonferroni over ~2000 thresholds makes it smaller than a single pre-chosen threshold.
    assert 0 < eps < clopper_pearson_epsilon(counts.tp, counts.fn, counts.fp, counts.tn)
    assert eps > 4.0
    null_eps, _, _ = best_attack_epsilon(rng.normal(size=1000), rng.normal(size=1000))
    assert null_eps < 0.5


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "expected"),
    [(100, 100, 100, 0.0, 3.4930), (1000, 200, 190, 1e-5, 2.3936)],
)
def test_one_run_spec_vectors(m: int, r: int, v: int, delta: float, expected: float) -> None:
    value = one_run_epsilon(m, r, v, delta=delta, beta=0.05)
    assert value == pytest.approx(expected, abs=1e-3)
    assert one_run_p_value(value, m, r, v, delta) < 0.05 <= one_run_p_value(value + 1e-3, m, r, v, delta)


def test_one_run_monotone_in_v() -> None:
    values = [one_run_epsilon(1000, 200, v, delta=1e-5) for v in range(90, 201, 5)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[0] == 0.0 and values[-1] > 0.0
    with pytest.raises(ValueError):
        one_run_epsilon(10, 20, 5)


def test_one_run_guesses() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    included = np.array([True, False, True, False, False, True])
    assert one_run_guesses(scores, included, 2, 2) == (4, 4)
    assert one_run_guesses(scores, included, 3, 0) == (3, 2)
    assert one_run_guesses(scores, included, 0, 3) == (3, 2)
    with pytest.raises(ValueError):
        one_run_guesses(scores, included, 4, 3)


# -- audit power -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("m", "r", "delta"), [(32, 16, 0.0), (64, 64, 1e-5), (384, 192, 1e-5), (200, 100, 1e-3)])
def test_one_run_power_is_the_largest_bound_over_every_outcome(m: int, r: int, delta: float) -> None:
    """No number of correct guesses certifies more than the power, and a perfect attack reaches it."""
    from privacy.audit.epsilon import one_run_power

    power = one_run_power(m, r, delta)
    bounds = [one_run_epsilon(m, r, v, delta) for v in range(0, r + 1, max(1, r // 16))] + [
        one_run_epsilon(m, r, r, delta)]
    assert max(bounds) == pytest.approx(power, rel=1e-9)
    assert all(b <= power + 1e-9 for b in bounds)


def test_one_run_power_of_the_old_default_and_the_new_design() -> None:
    """32 canaries with m/4 guesses each way could never certify eps = 2; the design for 2 x 2 can."""
    from privacy.audit.epsilon import one_run_canaries_for, one_run_power

    assert one_run_power(32, 16, 1e-5) < 2.0
    m = one_run_canaries_for(4.0, delta=1e-5, guess_fraction=0.5)
    assert one_run_power(m, m // 2, 1e-5) >= 4.0 > one_run_power(m - 1, (m - 1) // 2, 1e-5)


def test_clopper_pearson_power_bounds_every_attack() -> None:
    """Power = the bound of the perfect confusion matrix, and no other matrix of the same sizes beats it."""
    from privacy.audit.epsilon import clopper_pearson_power

    n_in, n_out, alpha = 60, 50, 0.05 / 4 / 110
    power = clopper_pearson_power(n_in, n_out, alpha)
    assert power == pytest.approx(clopper_pearson_epsilon(n_in, 0, 0, n_out, alpha=alpha))
    for tp, fp in itertools.product(range(0, n_in + 1, 6), range(0, n_out + 1, 5)):
        assert clopper_pearson_epsilon(tp, n_in - tp, fp, n_out - fp, alpha=alpha) <= power + 1e-12
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(3.0, 1.0, n_in), rng.normal(0.0, 1.0, n_out)
    eps, _, _ = best_attack_epsilon(members, nonmembers, alpha=0.05 / 4)
    thresholds = np.unique(np.concatenate([members, nonmembers])).size
    assert eps <= clopper_pearson_power(n_in, n_out, 0.05 / 4 / thresholds) + 1e-12


def test_power_note() -> None:
    from privacy.audit.epsilon import power_note

    assert power_note(1.58, 2.0) == "this audit cannot detect leaks above ε = 1.58 (claimed ε = 2.00)"
    assert power_note(4.2, 2.0) is None
    assert power_note(None, 2.0) is None and power_note(1.0, None) is None
