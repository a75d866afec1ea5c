"""The DP mechanism's randomness is node-local (docs/METHODS.md §2, "Randomness"): issue 13 (a), (b).

From the server's point of view: it knows the run seed, each client's partition and the round,
and receives every reply. With the default (OS entropy) it cannot regenerate the noise from those
values; with ``privacy.reproducible_noise`` (tests only) it can, and the statement says so.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import app as client_app
from distill.classifier import make_classifier
from fedveil.config import load_config, to_run_config
from privacy.dp.randomness import noise_source, reproducible_key
from privacy.dp.session import DPSession
from server.fd_coordinator import digits_privacy_statement
from server.statement import REPRODUCIBLE_NOISE_LINE, privacy_statement

SIGMA, C, B = 1.3, 0.7, 16
KEY = reproducible_key(0, 2, 1)  # what the server knows: run seed / partition / round


def _pure_noise(mode: str, reproducible: str | None) -> torch.Tensor:
    """One DP-SGD step on a loss with zero gradient: what is left on the gradient is the noise / B."""
    torch.manual_seed(0)
    model = torch.nn.Linear(100, 100)
    noise = noise_source(reproducible=reproducible)
    session = DPSession(model, lr=0.1, noise_multiplier=SIGMA, max_grad_norm=C, expected_batch_size=B, mode=mode,
                        generator=noise.generator)
    seen: list[torch.Tensor] = []
    session.optimizer.attach_step_hook(  # type: ignore[attr-defined]
        lambda _: seen.append(torch.cat([p.grad.detach().flatten() for p in model.parameters()])))  # type: ignore[union-attr]
    x = torch.randn(B, 100)
    session.step((session.module(x) * 0.0).sum(dim=1))
    session.close()
    return seen[0]


@pytest.mark.parametrize("mode", ["bk", "ghost", "hooks"])
def test_noise_is_not_reproducible_from_public_values_and_has_std_sigma_c_over_b(mode: str) -> None:
    first, regenerated = _pure_noise(mode, None), _pure_noise(mode, None)
    std = float(first.std())
    assert abs(std - SIGMA * C / B) < 0.03 * SIGMA * C / B  # 10100 draws: 3 % is > 4 standard errors
    corr = float(torch.corrcoef(torch.stack([first, regenerated]))[0, 1])
    assert abs(corr) < 0.05  # independent draws, not the same noise
    # The test switch brings the seeded behaviour back: the server could regenerate and subtract it.
    assert torch.equal(_pure_noise(mode, KEY), _pure_noise(mode, KEY))


def test_poisson_batches_are_not_reproducible() -> None:
    draws = [noise_source().rng.random(1000) for _ in range(2)]
    assert not np.array_equal(draws[0], draws[1])
    seeded = [noise_source(reproducible=KEY).rng.random(1000) for _ in range(2)]
    assert np.array_equal(seeded[0], seeded[1])


RUN_IDS = itertools.count(1)


def _fedavg_update(reproducible: bool) -> np.ndarray:
    """What the ServerApp receives from client 0 in round 1 of a digits FedAvg run with DP (each call a new run,
    so each node starts with an empty ledger of its own)."""
    cfg = load_config(None, ["data.task=digits", "federation.clients=2", "federation.rounds=2", "data.partition=iid",
                             "fd.proxy_size=40", "fd.warmup_epochs=1", "fd.local_epochs=1", "fd.hidden=16",
                             "fd.mode=fedavg", "distill.swing=false", "privacy.accountant=rdp", "he.enabled=false",
                             f"privacy.reproducible_noise={str(reproducible).lower()}"])
    ctx = Context(run_id=next(RUN_IDS), node_id=11, node_config={"partition-id": 0, "num-partitions": 2},
                  state=RecordDict(), run_config=to_run_config(cfg))  # type: ignore[arg-type]
    content = RecordDict({"config": ConfigRecord({"server-round": 1}),
                          "arrays": ArrayRecord(make_classifier(16, seed=0).state_dict())})
    reply = client_app(Message(content, dst_node_id=11, message_type="train"), ctx)
    return reply.content.array_records["arrays"]["fc1.weight"].numpy()


def test_two_runs_with_the_same_seed_differ_unless_reproducible_noise() -> None:
    assert not np.allclose(_fedavg_update(False), _fedavg_update(False))
    assert np.array_equal(_fedavg_update(True), _fedavg_update(True))


def test_statement_says_not_private_against_the_server_when_seeded() -> None:
    for task in ("synthetic-text", "digits"):
        statement = privacy_statement if task != "digits" else digits_privacy_statement
        base = [f"data.task={task}", "he.enabled=false"]
        assert REPRODUCIBLE_NOISE_LINE not in statement(load_config(None, base), {})
        assert "NOT PRIVATE AGAINST THE SERVER" in statement(
            load_config(None, [*base, "privacy.reproducible_noise=true"]), {})
