"""A store failure between a round's checkpoint and its round row, then a resume (issue 13 item 2, test d).

Real ClientApps (real DP-SGD, real accountant, node-owned ledgers), the real strategy and a real SQLite
store. Round 2's row fails to be written ("database is locked"); the run resumes from what the store
and the checkpoint agree on; the stored ε must never be below what the nodes spent.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import app as client_app
from client.node_store import load_ledger, run_node_dir
from distill.models import build_lm
from distill.textdata import public_corpus
from distill.tokenizer import tokenizer_to_json, train_tokenizer
from fedveil.config import load_config, to_dict, to_run_config
from fedveil.store import Store, StoreError
from server.strategies.fedavg import PrivateFedAvg, RoundLog, load_arrays, pending_path, resume_point, save_arrays
from server.validation import ArraySpec, ReplyPolicy

RUN = "resumetest"
OVERRIDES = ["federation.clients=2", "federation.rounds=3", "data.records_per_client=24", "data.public_records=200",
             "data.heldout_records=8", "data.max_length=48", "data.vocab_size=400", "train.local_steps=2",
             "train.batch_size=8", "train.method=dp-sft", "he.enabled=false", f"run.run_id='{RUN}'"]


class Federation:
    """Two nodes (node id = partition id) and a server-side strategy that the test drives round by round."""

    def __init__(self, tmp_path: Path) -> None:
        self.cfg = load_config(None, OVERRIDES)
        self.tok = train_tokenizer(public_corpus(0, 200), vocab_size=400)
        self.tj = tokenizer_to_json(self.tok)
        self.store = Store(f"sqlite:///{tmp_path / 's.db'}")
        self.store.create_run(to_dict(self.cfg), run_id=RUN, name="t", method="dp-sft", task="synthetic-text",
                              he_enabled=False, num_clients=2, num_rounds=3, seed=0)
        for c in (0, 1):
            self.store.register_client(RUN, c, node_id=str(c), num_examples=24)
        self.checkpoint = tmp_path / "checkpoint.npz"
        self.restart_nodes()

    def restart_nodes(self) -> None:
        """Fresh node processes: Context.state is empty, only the nodes' own directories remain."""
        self.ctx = {}
        for node in (0, 1):
            ctx = Context(run_id=1, node_id=node, node_config={"partition-id": node}, state=RecordDict(),
                          run_config=to_run_config(self.cfg))  # type: ignore[arg-type]
            ctx.state.config_records["tokenizer"] = ConfigRecord({"json": self.tj})
            self.ctx[node] = ctx

    def strategy(self, offset: int = 0, restored: dict[int, int] | None = None) -> PrivateFedAvg:
        ledger = {c: (int(r["steps"]), float(r["epsilon"])) for c, r in self.store.latest_ledger(RUN).items()}
        return PrivateFedAvg(store=self.store, run_id=RUN, node_to_client={0: 0, 1: 1}, min_clients=2,
                             max_payload_bytes=2**26, max_grad_norm=1.0, num_examples={0: 24, 1: 24},
                             policy=ReplyPolicy.of(self.cfg, local_steps=2), round_offset=offset,
                             checkpoint=self.checkpoint, ledger=ledger, restored=restored)

    def play(self, s: PrivateFedAvg, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        s.spec = ArraySpec.of(arrays)
        s.round = RoundLog(started_at=datetime.now(UTC), t0=0.0)
        s._sampled_nodes = {0, 1}
        s.nonce = f"nonce-{server_round}"
        conf = {"server-round": server_round, "he-scale": 48.0, "round-nonce": s.nonce,
                "tokenizer-sha256": hashlib.sha256(self.tj.encode()).hexdigest()}
        replies = [client_app(Message(RecordDict({"config": ConfigRecord(conf), "arrays": arrays}), dst_node_id=n,
                                      message_type="train"), self.ctx[n]) for n in (0, 1)]
        new, _ = s.aggregate_train(server_round - s.round_offset, replies)
        assert new is not None
        s.aggregate_evaluate(server_round - s.round_offset, [])
        return new

    def restore(self) -> dict[int, int]:
        rows = self.store.latest_ledger(RUN)
        out = {}
        for n in (0, 1):
            r = rows[n]
            state = {"accountant": r["accountant"], "sigma": [r["noise_multiplier"]], "q": [r["sample_rate"]],
                     "steps": [r["steps"]]}
            reply = client_app(Message(RecordDict({"ledger": ConfigRecord(state)}), dst_node_id=n,  # type: ignore[arg-type]
                                       message_type="query.restore"), self.ctx[n])
            out[n] = int(reply.content.config_records["restored"]["steps"])
        return out

    def node_epsilon(self, node: int) -> tuple[int, float]:
        ledger = load_ledger(run_node_dir(RUN, 1, node), "prv")
        delta = self.store.latest_ledger(RUN)[node]["delta"]
        return ledger.steps, ledger.epsilon(delta)


def test_store_failure_between_checkpoint_and_round_row_never_under_reports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fed = Federation(tmp_path)
    start = ArrayRecord(build_lm(fed.cfg.model.student, len(fed.tok)).state_dict())
    s = fed.strategy()
    after1 = fed.play(s, start, 1)
    assert load_arrays(fed.checkpoint)[1] == 1

    def locked(*args: object, **kwargs: object) -> None:
        raise StoreError("database is locked")

    with monkeypatch.context() as mp, pytest.raises(StoreError):
        mp.setattr(fed.store, "record_round", locked)
        fed.play(s, after1, 2)  # the nodes trained round 2 (4 steps each); the store never heard of it
    assert load_arrays(fed.checkpoint)[1] == 1 and pending_path(fed.checkpoint).exists()
    assert [r["server_round"] for r in fed.store.get_run(RUN)["rounds"]] == [1]

    # Resume: the checkpoint the store agrees with, the nodes' own ledgers, round 2 again.
    point = resume_point(fed.checkpoint, fed.store.get_run(RUN)["run"]["last_complete_round"])
    assert point is not None and point[1] == 1 and not pending_path(fed.checkpoint).exists()
    fed.restart_nodes()
    restored = fed.restore()
    assert restored == {0: 4, 1: 4}  # the nodes counted the round whose row was lost
    s = fed.strategy(offset=1, restored=restored)
    after2 = fed.play(s, point[0], 2)  # same global state: the nodes re-send their round-2 update, no new steps
    fed.play(s, after2, 3)
    run = fed.store.get_run(RUN)
    assert [r["server_round"] for r in run["rounds"]] == [1, 2, 3] and not run["events"]
    for node in (0, 1):
        steps, eps = fed.node_epsilon(node)
        stored = fed.store.latest_ledger(RUN)[node]
        assert steps == 6 == stored["steps"]
        assert stored["epsilon"] == pytest.approx(eps, rel=1e-9)  # the store shows what the node spent
        assert stored["epsilon"] <= fed.cfg.privacy.target_epsilon * (1 + 1e-9)


def test_a_checkpoint_the_store_recorded_is_promoted_and_an_unrecorded_one_dropped(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint.npz"
    arrays = ArrayRecord({"w": build_lm("student-xs", 50).state_dict()["model.norm.weight"]})
    save_arrays(arrays, ckpt, 1)
    save_arrays(arrays, pending_path(ckpt), 2)
    assert resume_point(ckpt, 2)[1] == 2  # type: ignore[index]  # crashed after the row, before promotion
    save_arrays(arrays, pending_path(ckpt), 3)
    assert resume_point(ckpt, 2)[1] == 2  # type: ignore[index]  # the row for round 3 never got written
    assert not pending_path(ckpt).exists()
    save_arrays(arrays, ckpt, 4)
    with pytest.raises(RuntimeError, match="unrecorded round"):
        resume_point(ckpt, 2)
