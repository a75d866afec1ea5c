"""Direct ClientApp calls for the digits task (no Ray): soft labels + votes, ε, HE, malformed requests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from opacus.accountants import RDPAccountant

from client.app import app as client_app
from privacy.dp import PrivacyBudgetExhausted
from client.fd_runtime import SUMS, COUNTS, LABELS, VOTES, received_targets
from client.fd_train import load_node
from distill.classifier import make_classifier, predict_logits
from distill.fd import aggregate_soft_labels, swing_temperature
from distill.kmeans_filter import KMeansDensityFilter
from fedveil.config import Config, load_config, to_dict, to_run_config
from fedveil.store import Store
from server.strategies.fd import SoftLabelFD
from server.validation import ReplyPolicy

SMALL = ["data.task=digits", "federation.clients=4", "federation.rounds=2", "data.partition=iid", "fd.proxy_size=40",
         "fd.warmup_epochs=1", "fd.local_epochs=1", "fd.hidden=16", "fd.mode=fd-kmeans", "distill.swing=false",
         "privacy.accountant=rdp", "he.enabled=false"]


def _cfg(*extra: str) -> Config:
    return load_config(None, [*SMALL, *extra])


def _contexts(cfg: Config, k: int | None = None) -> list[Context]:
    n = cfg.federation.clients if k is None else k
    return [Context(run_id=1, node_id=11 + i, node_config={"partition-id": i, "num-partitions": n}, state=RecordDict(),
                    run_config=to_run_config(cfg)) for i in range(n)]  # type: ignore[arg-type]


def _msg(kind: str, node: int, arrays: ArrayRecord | None, server_round: int, **conf: float) -> Message:
    content = RecordDict({"config": ConfigRecord({"server-round": server_round, **conf})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, dst_node_id=node, message_type=kind)


def _train(ctxs: list[Context], arrays: ArrayRecord, server_round: int, **conf: float) -> list[Message]:
    return [client_app(_msg("train", 11 + i, arrays, server_round, **conf), c) for i, c in enumerate(ctxs)]


def _strategy(tmp_path: Path, cfg: Config, he_context: object = None, arrays: ArrayRecord | None = None
              ) -> SoftLabelFD:
    store = Store(f"sqlite:///{tmp_path / 'fd.db'}")
    run_id = store.create_run(to_dict(cfg), name="t", method=cfg.fd.mode, task="digits", he_enabled=cfg.he.enabled,
                              num_clients=cfg.federation.clients, num_rounds=cfg.federation.rounds, seed=0)
    n = cfg.federation.clients
    s = SoftLabelFD(mode=cfg.fd.mode, n_proxy=cfg.fd.proxy_size, n_classes=10, he_context=he_context,
                    he_profile=cfg.he.profile, store=store, run_id=run_id, node_to_client={11 + i: i for i in range(n)},
                    min_clients=2, max_payload_bytes=2**24, max_grad_norm=cfg.privacy.max_grad_norm,
                    policy=ReplyPolicy.of(cfg),  # weights fixed at hello: each node's record count
                    num_examples={11 + i: len(load_node(c).data.y) for i, c in enumerate(_contexts(cfg))})
    s.open_round(range(11, 11 + n), arrays)
    return s


def _metrics(reply: Message) -> dict[str, float]:
    """The reply's MetricRecord as plain floats (every digits metric is a scalar)."""
    return {k: float(v) for k, v in reply.content.metric_records["metrics"].items()}  # type: ignore[arg-type]


def _rdp_epsilon(m: dict[str, float]) -> float:
    acc = RDPAccountant()
    acc.history = [(m["noise-multiplier"], m["sample-rate"], int(m["steps"]))]
    return float(acc.get_epsilon(delta=m["delta"]))


def test_hello_reports_partition_and_record_count() -> None:
    cfg = _cfg()
    ctx = _contexts(cfg)[2]
    reply = client_app(Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=13, message_type="query.hello"),
                       ctx)
    hello = reply.content.config_records["hello"]
    assert hello["partition-id"] == 2 and hello["num-examples"] == len(load_node(ctx).data.y)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_two_rounds_share_filtered_labels_and_accumulate_epsilon(tmp_path: Path, mode: str) -> None:
    cfg = _cfg(f"privacy.grad_sample_mode={mode}")
    ctxs = _contexts(cfg)
    node0 = load_node(ctxs[0])
    replies = _train(ctxs, ArrayRecord(), 1)
    labels, votes = [], []
    for i, (ctx, reply) in enumerate(zip(ctxs, replies)):
        m = _metrics(reply)
        up = reply.content.array_records["arrays"]
        lab, vot = up[LABELS].numpy(), up[VOTES].numpy()
        # Votes are exactly the node's KMeans filter decision; voted rows are distributions, others zero.
        filt = KMeansDensityFilter().load_state_dict(json.loads(str(ctx.state.config_records["fd-filter"]["json"])))
        assert np.array_equal(vot.astype(bool), filt.in_distribution(node0.task.X_proxy))
        assert np.allclose(lab.sum(axis=1), vot, atol=1e-5) and lab.min() >= 0
        assert m["votes"] == vot.sum() and m["accepted-share"] == pytest.approx(vot.mean())
        assert m["partition-id"] == i and m["proxy-kept"] == 0
        assert m["epsilon"] == pytest.approx(_rdp_epsilon(m), rel=1e-6)
        assert reply.content.config_records["privacy"]["grad-sample-mode"] == mode
        labels.append(lab)
        votes.append(vot)
    eps1 = [_metrics(r)["epsilon"] for r in replies]

    strategy = _strategy(tmp_path, cfg)
    aggregate, _ = strategy.aggregate_train(1, replies)
    assert aggregate is not None
    assert np.allclose(aggregate[SUMS].numpy(), np.sum(labels, axis=0))
    assert np.array_equal(aggregate[COUNTS].numpy(), np.sum(votes, axis=0))
    kept = int(np.sum(np.sum(votes, axis=0) > 0))

    replies2 = _train(ctxs, aggregate, 2)
    for e1, reply in zip(eps1, replies2):
        m = _metrics(reply)
        assert m["proxy-kept"] == kept
        assert e1 < m["epsilon"] <= cfg.privacy.target_epsilon + 1e-9
        assert m["epsilon"] == pytest.approx(_rdp_epsilon(m), rel=1e-6)
    for i, ctx in enumerate(ctxs):
        ev = _metrics(client_app(_msg("evaluate", 11 + i, ArrayRecord(), 2), ctx))
        assert 0 <= ev["accuracy-global"] <= 1 and 0 <= ev["accuracy-own"] <= 1
    # σ was planned for exactly `rounds` rounds: a third one would overspend and is refused.
    with pytest.raises(PrivacyBudgetExhausted, match="refusing"):
        client_app(_msg("train", 11, aggregate, 3), ctxs[0])


def test_encrypted_aggregate_matches_plaintext(tmp_path: Path) -> None:
    from privacy.he.keys import load_public_context, load_secret_context, write_keys
    from privacy.he.packing import decrypt_payload, payload_from_arrays
    keys = write_keys(tmp_path / "keys", "compact")
    cfg = _cfg("federation.clients=3", "he.enabled=true", f"he.key_dir='{keys}'", "distill.swing=true",
               "distill.noise_s1=0.5", "data.partition=dirichlet", "privacy.enabled=false")
    ctxs = _contexts(cfg)
    replies = _train(ctxs, ArrayRecord(), 1, **{"he-clients": 3.0})
    secret = load_secret_context(keys / "secret.ctx")
    plain_l, plain_v = [], []
    for reply in replies:
        m = _metrics(reply)
        assert m["he-bytes"] > 0 and m["he-max-abs-error"] < 1e-3
        up = decrypt_payload(secret, payload_from_arrays({k: v.numpy() for k, v in
                                                          reply.content.array_records["arrays"].items()}))
        plain_l.append(up[LABELS] * 3.0)
        plain_v.append(up[VOTES] * 3.0)
    strategy = _strategy(tmp_path, cfg, he_context=load_public_context(keys / "public.ctx"))
    aggregate, _ = strategy.aggregate_train(1, replies)
    assert aggregate is not None and SUMS not in aggregate  # the server holds ciphertext only
    node = load_node(ctxs[0])
    targets, kept, _ = received_targets(node, ctxs[0], aggregate, ConfigRecord({"he-clients": 3.0}))
    expect, expect_kept = aggregate_soft_labels(np.sum(plain_l, axis=0), np.round(np.sum(plain_v, axis=0)))
    assert np.array_equal(kept, expect_kept)
    assert np.max(np.abs(targets - expect)) < 1e-3
    replies2 = _train(ctxs, aggregate, 2, **{"he-clients": 3.0})
    assert all(_metrics(r)["proxy-kept"] == len(kept) for r in replies2)
    assert all(_metrics(r)["he-decrypt-s"] > 0 for r in replies2)


def test_swing_labels_use_per_sample_temperature() -> None:
    from client.fd_runtime import soft_label_upload
    from client.fd_train import fit_filter
    cfg = _cfg("distill.swing=true", "distill.noise_s0=0", "distill.noise_s1=0", "distill.tau_max=6")
    node = load_node(_contexts(cfg)[1])
    filt = fit_filter(node)
    model = make_classifier(16, seed=3)
    labels, votes, _ = soft_label_upload(node, model, filt, np.random.default_rng(0))
    tau = swing_temperature(filt.privacy_likelihood(node.task.X_proxy), cfg.distill.tau0, cfg.distill.tau_max)
    z = predict_logits(model, node.task.X_proxy).astype(np.float64) / tau[:, None]
    q = np.exp(z - z.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    accepted = votes.astype(bool)
    assert accepted.any() and np.allclose(labels[accepted], q[accepted], atol=1e-6)
    assert np.all(labels[~accepted] == 0)


@pytest.mark.parametrize("mode", ["fedavg", "local"])
def test_baselines(tmp_path: Path, mode: str) -> None:
    cfg = _cfg(f"fd.mode={mode}", "privacy.enabled=false", "federation.clients=2")
    ctxs = _contexts(cfg)
    start = ArrayRecord(make_classifier(16, seed=0).state_dict()) if mode == "fedavg" else ArrayRecord()
    replies = _train(ctxs, start, 1)
    strategy = _strategy(tmp_path, cfg, arrays=start)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    if mode == "local":
        assert len(arrays) == 0 and all(len(r.content.array_records["arrays"]) == 0 for r in replies)
    else:
        w = [float(_metrics(r)["num-examples"]) for r in replies]
        ups = [r.content.array_records["arrays"]["fc1.weight"].numpy() for r in replies]
        assert np.allclose(arrays["fc1.weight"].numpy(), np.average(ups, axis=0, weights=w), atol=1e-6)
    evals = [client_app(_msg("evaluate", 11 + i, arrays, 1), c) for i, c in enumerate(ctxs)]
    result = strategy.aggregate_evaluate(1, evals)
    assert result is not None and 0 <= float(result["accuracy"]) <= 1  # type: ignore[arg-type]


def test_malformed_requests_are_refused(tmp_path: Path) -> None:
    cfg = _cfg()
    ctx = _contexts(cfg)[0]
    P = cfg.fd.proxy_size
    with pytest.raises(ValueError, match="config"):
        client_app(Message(RecordDict({"arrays": ArrayRecord()}), dst_node_id=11, message_type="train"), ctx)
    with pytest.raises(ValueError, match="no trained classifier"):
        client_app(_msg("evaluate", 11, ArrayRecord(), 1), ctx)
    wrong = ArrayRecord({SUMS: Array(np.zeros((P, 9))), COUNTS: Array(np.ones(P))})
    with pytest.raises(ValueError, match="shapes"):
        client_app(_msg("train", 11, wrong, 2), ctx)
    nan = np.ones((P, 10))
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        client_app(_msg("train", 11, ArrayRecord({SUMS: Array(nan), COUNTS: Array(np.ones(P))}), 2), ctx)
    with pytest.raises(ValueError, match="he.enabled is false"):
        client_app(_msg("train", 11, ArrayRecord({"he.header": Array(np.zeros(3, np.uint8)),
                                                  "he.chunks": Array(np.zeros(3, np.uint8))}), 2), ctx)
    # Nothing was trained or spent by the refused requests.
    assert "ledger" not in ctx.state.config_records and "fd-model" not in ctx.state.array_records

    from privacy.he.keys import write_keys
    keys = write_keys(tmp_path / "keys", "compact")
    he_ctx = _contexts(_cfg("he.enabled=true", f"he.key_dir='{keys}'"))[0]
    garbled = ArrayRecord({"he.header": Array(np.frombuffer(b'{"format": 1}', np.uint8)),
                           "he.chunks": Array(np.zeros(8, np.uint8))})
    with pytest.raises(ValueError, match="malformed"):
        client_app(_msg("train", 11, garbled, 2, **{"he-clients": 4.0}), he_ctx)
    with pytest.raises(ValueError, match="he-clients"):
        client_app(_msg("train", 11, ArrayRecord(), 1), he_ctx)

    fedavg = _contexts(_cfg("fd.mode=fedavg"))[0]
    with pytest.raises(ValueError, match="do not match"):
        client_app(_msg("train", 11, ArrayRecord(make_classifier(8, seed=0).state_dict()), 1), fedavg)
