"""The node's secret audit coins (docs/METHODS.md §8): random member assignment and canary inclusion."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fedveil.config import load_config
from fedveil.files import NODE_DIR_ENV
from privacy.audit import coins
from privacy.audit.plan import mia_split, node_plan, run_canary_plan

SMALL = ["federation.clients=2", "data.records_per_client=400", "audit.n_references=64",
         "audit.one_run_canaries=400", "audit.max_canary_share=0.9"]


def _encode(text: str) -> list[int]:
    return [1, *text.encode()]  # one token per byte: equal-length candidates stay equal


def test_key_is_os_entropy_kept_0600_in_the_node_dir_and_reused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NODE_DIR_ENV, str(tmp_path / "node"))
    first = coins.coin_key("run-a", 0)
    path = coins.coin_key_path("run-a", 0)
    assert path is not None and stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) == coins.KEY_BYTES
    assert path.is_relative_to(tmp_path / "node")  # the node's directory, never the server's run directory
    assert coins.coin_key("run-a", 0) == first  # a resumed run or a later audit: same coins
    assert coins.coin_key("run-b", 0) != first
    assert coins.coin_key("run-a", 1) != first
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="expected 32"):
        coins.coin_key("run-a", 0)


def test_canary_inclusion_is_a_fair_secret_coin_not_the_seed(tmp_path: Path) -> None:
    """Same configuration and seed, two nodes' keys: different inclusions, each Bin(m, 1/2)-like, and the
    server's copy of the plan (derived from the seed) holds no coin at all."""
    cfg_a = load_config(None, [*SMALL, f"run.run_dir='{tmp_path}'", "run.run_id='a'"])
    cfg_b = load_config(None, [*SMALL, f"run.run_dir='{tmp_path}'", "run.run_id='b'"])
    plan = run_canary_plan(cfg_a, _encode)
    assert plan == run_canary_plan(cfg_b, _encode)  # the seed fixes the canaries, not their coins
    assert not any(c.inserted for c in plan if c.canary_id.startswith("onerun"))
    flags = []
    for cfg in (cfg_a, cfg_b):
        resolved = [c for c in node_plan(cfg, 0, 400, plan) if c.canary_id.startswith("onerun")]
        assert len(resolved) == 200
        flags.append(np.array([c.inserted for c in resolved]))
        assert all(c.repetitions == int(c.inserted) for c in resolved)
        assert stats.binomtest(int(flags[-1].sum()), flags[-1].size, 0.5).pvalue > 1e-4
    assert (flags[0] != flags[1]).sum() > 50  # independent coins disagree on about half
    again = [c.inserted for c in node_plan(cfg_a, 0, 400, plan) if c.canary_id.startswith("onerun")]
    assert np.array_equal(flags[0], again)


def test_member_split_is_a_secret_random_split_of_one_pool(tmp_path: Path) -> None:
    cfg = load_config(None, [*SMALL, f"run.run_dir='{tmp_path}'", "run.run_id='a'", "audit.mia_holdout=0.25"])
    texts = [f"record {i}" for i in range(2000)]
    members, held = mia_split(cfg, 0, texts)
    assert sorted(members + held) == sorted(texts) and not set(members) & set(held)
    assert stats.binomtest(len(held), len(texts), 0.25).pvalue > 1e-4
    # Position in the shard does not decide: held-out records spread evenly over the pool (no block split).
    index = np.array([int(t.split()[1]) for t in held])
    assert stats.kstest(index / len(texts), "uniform").pvalue > 1e-4
    other = mia_split(load_config(None, [*SMALL, f"run.run_dir='{tmp_path}'", "run.run_id='b'",
                                         "audit.mia_holdout=0.25"]), 0, texts)[1]
    assert len(set(held) ^ set(other)) > 300  # another node key, another split
    assert mia_split(load_config(None, [*SMALL, "audit.kinds=['exposure']"]), 0, texts) == (texts, [])


def test_default_design_has_power_twice_the_claim(tmp_path: Path) -> None:
    """Issue 20 Done-when: the default audit of the global model, after every node's share cap, could
    certify at least 2 x the target epsilon with a perfect attack."""
    from privacy.audit.epsilon import one_run_power
    from privacy.audit.plan import ONE_RUN_GUESS_FRACTION

    cfg = load_config(None, [f"run.run_dir='{tmp_path}'", "run.run_id='d'"])
    plan = run_canary_plan(cfg, _encode)
    m = sum(1 for pid in range(cfg.federation.clients)
            for c in node_plan(cfg, pid, cfg.data.records_per_client, plan) if c.canary_id.startswith("onerun"))
    r = 2 * int(m * ONE_RUN_GUESS_FRACTION / 2)
    assert one_run_power(m, r, 1e-5) >= 2 * cfg.privacy.target_epsilon
