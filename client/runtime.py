"""Client-side work behind the ClientApp handlers, kept apart from Flower's decorators.

The per-node state that must survive between messages (the DP ledger, the planned noise
multiplier, the trained teacher) lives in Flower's ``Context.state``; everything else is
rebuilt deterministically from the run configuration.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.app.typing import ConfigRecordValues, MetricRecordValues

from client import he_client
from client.node_store import load_ledger, load_round, reconcile, run_node_dir, save_ledger, save_round
from privacy.dp.randomness import noise_source, reproducible_key
from privacy.dp import (
    DPSession,
    Ledger,
    PrivacyBudgetExhausted,
    default_delta,
    plan_noise,
    poisson_batches,
    run_dp_steps,
)
from client.protocol import ProtocolError, require_config, require_int, require_str
from distill.textdata import TokenisedRecords, client_texts, heldout_shard, public_corpus, tokenise, with_canaries
from client.trainers import METHODS, LMTrainer, SFTConfig, TrainerConfig, heldout_nll
from distill.pretrain import train_plain
from distill.loaders import load_text_records
from distill.hf import load_travelling_state, student_lm, teacher_lm, travelling_state
from distill.models import pick_device
from distill.tokenizer import tokenizer_from_json
from fedveil.config import Config, from_run_config

log = logging.getLogger("fedveil.client")


@dataclass
class NodeState:
    """What one node knows: its configuration, partition and device."""

    cfg: Config
    partition_id: int
    device: torch.device
    data_path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_context(cls, context: Context) -> NodeState:
        cfg = _config(tuple(sorted(context.run_config.items())))
        nc = context.node_config
        if "partition-id" not in nc:
            raise ProtocolError("node config has no 'partition-id'; start the SuperNode with "
                                "--node-config \"partition-id=N data-path=/path/records.jsonl\"")
        pid = int(nc["partition-id"])
        data_path = str(nc["data-path"]) if "data-path" in nc else None
        device = pick_device(str(nc.get("device", cfg.model.device)))
        node = cls(cfg, pid, device, data_path)
        node.extra["node-config"] = dict(nc)  # he_client finds the node's secret context from it
        return node

    def texts(self) -> list[str]:
        if self.data_path:  # deployment: the node's own file, never partitioned by the server
            return load_text_records(self.data_path, field=self.cfg.data.field)
        return client_texts(self.cfg, self.partition_id)

    def num_examples(self) -> int:
        return len(self.texts())

    def directory(self, context: Context) -> Path:
        """This node's own state directory for the run (ledger, last update; :mod:`client.node_store`)."""
        return run_node_dir(self.cfg.run.run_id, context.run_id, self.partition_id)


@lru_cache(maxsize=8)
def _config(items: tuple[tuple[str, Any], ...]) -> Config:
    return from_run_config(dict(items))


@lru_cache(maxsize=4)
def _tokenizer(text: str) -> Any:
    return tokenizer_from_json(text)


@dataclass(frozen=True)
class Request:
    """A validated train/evaluate request."""

    server_round: int
    tokenizer: Any
    arrays: ArrayRecord
    he_scale: float
    round_nonce: str = ""  # this round's nonce (train requests): it goes inside the encrypted update
    # Under HE, what the aggregate in ``arrays`` must decrypt to: (nonce of the round it aggregates, summed
    # hello-declared weight of the replies the server accepted); None when the server sent no expectation.
    he_expect: tuple[str, float] | None = None


def remember_tokenizer(msg: Message, context: Context) -> None:
    """Keep the run's tokenizer (sent once, in the hello query) in Context.state."""
    tok_json = require_str(require_config(msg.content, "config"), "tokenizer")
    _tokenizer(tok_json)  # fail now, not mid-round, if it does not parse
    context.state.config_records["tokenizer"] = ConfigRecord({"json": tok_json})


def restore_ledger(msg: Message, context: Context) -> int:
    """On resume: compare the server's copy of this node's history with the node's own ledger.

    The node's own wins (:func:`client.node_store.reconcile`); a sent history is adopted only when it
    extends the node's (ε can only rise). Returns the node's step count, which the server checks
    later replies against.
    """
    node = NodeState.from_context(context)
    sent = dict(require_config(msg.content, "ledger"))
    directory = node.directory(context)
    own = load_ledger(directory, node.cfg.privacy.accountant)
    kept = reconcile(own, sent)  # raises ValueError on a malformed history before anything is kept
    if kept is not own:
        save_ledger(directory, kept)
    return kept.steps


def parse_request(msg: Message, context: Context, *, first_round: int = 1) -> Request:
    """Check every field the client reads: presence, type, range.

    ``first_round`` is 0 for evaluation (round 0 evaluates the student every client starts from), 1 else.
    """
    content = msg.content
    conf = require_config(content, "config")
    server_round = require_int(conf, "server-round", lo=first_round)
    if "tokenizer" not in context.state.config_records:
        raise ProtocolError("this node has no tokenizer for the run (the hello query was not received)")
    tok_json = str(context.state.config_records["tokenizer"]["json"])
    expected = require_str(conf, "tokenizer-sha256")
    if hashlib.sha256(tok_json.encode()).hexdigest() != expected:
        raise ProtocolError("the node's tokenizer differs from the server's (sha256 mismatch)")
    if "arrays" not in content.array_records:
        raise ProtocolError("request has no ArrayRecord 'arrays'")
    raw_scale = conf.get("he-scale", 1.0)
    if isinstance(raw_scale, bool) or not isinstance(raw_scale, (int, float)):
        raise ProtocolError(f"he-scale must be a number, got {type(raw_scale).__name__}")
    he_scale = float(raw_scale)
    if not he_scale > 0:
        raise ProtocolError(f"he-scale must be positive, got {he_scale}")
    nonce = conf.get("round-nonce", "")
    agg_nonce, agg_weight = conf.get("he-aggregate-nonce"), conf.get("he-aggregate-weight")
    expect = None
    if agg_nonce is not None or agg_weight is not None:
        if not (isinstance(agg_nonce, str) and isinstance(agg_weight, float) and 0.0 < agg_weight <= 1.0 + 1e-9):
            raise ProtocolError("he-aggregate-nonce must be a string and he-aggregate-weight a number in (0, 1]")
        expect = (agg_nonce, agg_weight)
    return Request(server_round, _tokenizer(tok_json), content.array_records["arrays"], he_scale,
                   round_nonce=nonce if isinstance(nonce, str) else "", he_expect=expect)


@dataclass
class TrainResult:
    arrays: ArrayRecord
    metrics: dict[str, MetricRecordValues]
    privacy: dict[str, ConfigRecordValues]


def _data(node: NodeState, tokenizer: Any) -> TokenisedRecords:
    cfg = node.cfg
    key = (id(tokenizer), node.partition_id, node.data_path)
    cached = node.extra.get("data")
    if cached is None or cached[0] != key:
        data = tokenise(tokenizer, with_canaries(cfg, node.partition_id, node.texts(), tokenizer),
                        max_length=cfg.data.max_length,
                        prompt_length=cfg.distill.prompt_length)
        node.extra["data"] = (key, data)
        return data
    return cached[1]


def _global_student(node: NodeState, request: Request) -> torch.nn.Module:
    cfg = node.cfg
    model = student_lm(cfg, len(request.tokenizer))
    load_travelling_state(model, he_client.global_state(node, request, model))
    model.to(node.device)
    return model


def teacher_provenance(cfg: Config) -> str:
    """What the teacher saw: none for DP-SFT; a checkpoint used as it is (teacher_steps = 0) saw no record."""
    if isinstance(trainer_config(cfg), SFTConfig):
        return "none"
    return "private-non-dp" if cfg.train.teacher_private and cfg.train.teacher_steps > 0 else "public"


def _teacher(node: NodeState, context: Context, tokenizer: Any, data: TokenisedRecords) -> torch.nn.Module:
    """The frozen teacher, trained once per run and kept in Context.state."""
    cfg = node.cfg
    teacher = teacher_lm(cfg, len(tokenizer), seed=cfg.run.seed + 1 + node.partition_id)
    if "teacher" in context.state.array_records:
        teacher.load_state_dict(context.state.array_records["teacher"].to_torch_state_dict())
        teacher.to(node.device)
        return teacher.eval()
    if cfg.train.teacher_private:
        source = data
    else:
        source = tokenise(tokenizer, list(public_corpus(cfg.run.seed, cfg.data.public_records)),
                          max_length=cfg.data.max_length, prompt_length=cfg.distill.prompt_length,
                          with_privacy=False)
    rng = np.random.default_rng(cfg.run.seed * 1000 + node.partition_id)
    train_plain(teacher, source, steps=cfg.train.teacher_steps, lr=cfg.train.teacher_lr,
                  batch_size=cfg.train.batch_size, rng=rng, device=node.device)
    context.state.array_records["teacher"] = ArrayRecord(teacher.state_dict())
    return teacher.eval()


def trainer_config(cfg: Config) -> TrainerConfig:
    """Map the run configuration to the trainer's own Config dataclass."""
    return METHODS[cfg.train.method](cfg.distill)


def arrays_digest(arrays: ArrayRecord) -> str:
    """SHA-256 of a received global state (names, dtypes, shapes, bytes): which input a round's update answers."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.data)
    return h.hexdigest()


def train_round(node: NodeState, request: Request, context: Context) -> TrainResult:
    """One round: the node's own ledger, the planned DP-SGD steps (or a repeat), the reply.

    The ledger is read from and written to the node's state directory (:mod:`client.node_store`),
    after the steps and before the update leaves the node. A round the node already answered for this
    very global state (a resumed run repeating the round after its last checkpoint) is answered with
    the same update again: re-sending a released output costs no ε (docs/METHODS.md §2).
    """
    cfg = node.cfg
    directory = node.directory(context)
    ledger = load_ledger(directory, cfg.privacy.accountant)
    n = len(_data(node, request.tokenizer))
    delta = cfg.privacy.delta or default_delta(n)
    digest = arrays_digest(request.arrays)
    repeat = load_round(directory, request.server_round, digest)
    if repeat is None:
        student, stats = _train_steps(node, request, context, ledger, delta)
        save_ledger(directory, ledger)  # the node's budget is spent: recorded before anything leaves
        save_round(directory, request.server_round, digest, travelling_state(student), stats)
    else:
        log.info("client %d: round %d already answered for this global state; sending the same update",
                 node.partition_id, request.server_round)
        student = student_lm(cfg, len(request.tokenizer))
        load_travelling_state(student, repeat[0])
        stats = repeat[1]
    # The node's last local student, kept for the end-of-run audit (never sent anywhere else).
    context.state.array_records["student"] = ArrayRecord(travelling_state(student))
    dp = cfg.privacy.enabled
    eps = ledger.epsilon(delta) if dp else float("inf")
    # The HE weight is the hello-declared record count (canary copies excluded), the count the server checks.
    arrays, he_metrics = he_client.encode_update(node, request, student, node.num_examples())
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": n, "epsilon": eps if np.isfinite(eps) else -1.0, "delta": delta,
        "steps": ledger.steps, "partition-id": node.partition_id, **he_metrics,
        **{k: v for k, v in stats.items() if k != "grad-sample-mode"},
    }
    privacy: dict[str, ConfigRecordValues] = {
        "accountant": cfg.privacy.accountant, "grad-sample-mode": str(stats["grad-sample-mode"]),
        "teacher-provenance": teacher_provenance(cfg), "dp": dp,
    }
    return TrainResult(arrays, metrics, privacy)


def _train_steps(node: NodeState, request: Request, context: Context, ledger: Ledger,
                 delta: float) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The planned DP-SGD steps on the global student; ``ledger`` is advanced in place."""
    cfg = node.cfg
    seed_key = f"{cfg.run.seed}/{node.partition_id}/{request.server_round}"
    seed = int(hashlib.sha256(seed_key.encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = _data(node, request.tokenizer)
    n = len(data)
    tconf = trainer_config(cfg)
    teacher = None if isinstance(tconf, SFTConfig) else _teacher(node, context, request.tokenizer, data)
    student = _global_student(node, request)
    sigma, q = None, min(1.0, cfg.train.batch_size / n)
    if cfg.privacy.enabled:
        plan = plan_noise(target_epsilon=cfg.privacy.target_epsilon, delta=delta, n_records=n,
                          batch_size=cfg.train.batch_size, total_steps=cfg.federation.rounds * cfg.train.local_steps,
                          max_grad_norm=cfg.privacy.max_grad_norm, accountant=cfg.privacy.accountant)
        sigma, q = plan.noise_multiplier, plan.sample_rate
        projected = ledger.epsilon_after(delta, sigma, q, cfg.train.local_steps)
        if projected > cfg.privacy.target_epsilon * (1 + 1e-9):
            raise PrivacyBudgetExhausted(
                f"round {request.server_round} would raise epsilon to {projected:.3f} > budget "
                f"{cfg.privacy.target_epsilon} ({ledger.steps} steps already taken); refusing")

    gen = torch.Generator(device=node.device).manual_seed(seed)  # rollouts: seeded, not the mechanism
    # The mechanism's noise and batches: node-local OS entropy unless the test switch asks (docs/METHODS.md §2).
    noise = noise_source(node.device, reproducible=reproducible_key(seed_key) if cfg.privacy.reproducible_noise
                         else None)
    trainer = LMTrainer(tconf, data, teacher=teacher, tokenizer=request.tokenizer, device=node.device,
                        generator=gen, rng=rng)
    session = DPSession(student, lr=cfg.train.lr, noise_multiplier=sigma, max_grad_norm=cfg.privacy.max_grad_norm,
                        expected_batch_size=cfg.train.batch_size, mode=cfg.privacy.grad_sample_mode,
                        generator=noise.generator)
    batches = poisson_batches(n, q, cfg.train.local_steps, noise.rng)
    losses = run_dp_steps(session, batches, lambda idx: trainer.loss(session, idx), ledger if sigma else None, q)
    stats: dict[str, Any] = {"noise-multiplier": sigma or 0.0, "sample-rate": q, "round-steps": len(batches),
             "empty-batches": sum(1 for b in batches if len(b) == 0), "on-policy-steps": trainer.on_policy_steps,
             "grad-sample-mode": session.mode}
    if cfg.privacy.release_train_loss:  # computed on private batches: released only when asked and stated
        stats["train-loss"] = float(np.mean(losses)) if losses else float("nan")
    return session.close(), stats


def evaluate_global(node: NodeState, request: Request, context: Context) -> dict[str, float]:
    """Held-out NLL sums and token counts on this node's shard: the global student (``nll-sum``,
    ``tokens``) and, once this node has trained one, its teacher (``teacher-nll-sum``, ``teacher-tokens``;
    a non-private reference, listed in the privacy statement as a release)."""
    cfg = node.cfg
    model = _global_student(node, request)  # decrypts (and measures HE error) even with an empty shard
    texts = heldout_shard(cfg, node.partition_id)
    if not texts:
        return {"nll-sum": 0.0, "tokens": 0}
    data = tokenise(request.tokenizer, texts, max_length=cfg.data.max_length,
                    prompt_length=cfg.distill.prompt_length, with_privacy=False)
    nll, tokens = heldout_nll(model, data, node.device)
    out = {"nll-sum": nll, "tokens": tokens}
    if "teacher" in context.state.array_records:
        teacher = _teacher(node, context, request.tokenizer, data)
        out["teacher-nll-sum"], out["teacher-tokens"] = heldout_nll(teacher, data, node.device)
    return out
