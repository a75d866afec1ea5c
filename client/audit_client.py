"""Client side of the end-of-run audits: the ``query.audit`` handler (docs/METHODS.md §8).

The server sends the final global weights (plaintext, or the CKKS aggregate the client decrypts)
and the audit kinds. The client gathers the models it has — its teacher, its last local student,
the global student — trains the two comparison models of the audit (a same-size student fine-tuned
with plain cross-entropy on the same records for as many steps as its DP training took, and a
reference model for the MIA), saves its teacher and student for on-demand audits, and replies with
numbers only (:mod:`privacy.audit.measures`): no record, no canary text, no secret.

Reference model of the reference-difference MIA score: a same-size student trained with plain
cross-entropy on the public corpus for the same number of steps (at least ``REFERENCE_MIN_STEPS``).
It knows the language of the records but none of them, so ``log p_M(x) − log p_ref(x)`` removes
how easy a record is in general and keeps what training on it added. A fresh untrained model
would only subtract a per-token constant; the public one costs a few seconds on this model size.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client import he_client, runtime
from client.node_store import load_ledger
from privacy.audit.measures import ALL_KINDS, AuditData, audit_client_models, client_canaries
from privacy.dp import Ledger, default_delta
from client.protocol import ProtocolError, require_config
from distill.textdata import canary_plan, public_corpus, tokenise, with_canaries
from distill.hf import load_travelling_state, student_lm, teacher_lm
from distill.models import save_checkpoint
from distill.pretrain import train_plain
from fedveil.config import Config
from privacy.audit.plan import (
    canary_share,
    is_one_run,
    mia_split,
    node_plan,
    reference_candidates,
    training_encode,
)

__all__ = [
    "FINETUNE_MAX_STEPS",
    "REFERENCE_MIN_STEPS",
    "dp_steps_taken",
    "finetune_baseline",
    "audit_delta",
    "handle_audit",
    "measure_node",
    "parse_kinds",
    "public_reference_model",
]

log = logging.getLogger("fedveil.client")
FINETUNE_MAX_STEPS = 200
REFERENCE_MIN_STEPS = 32


def parse_kinds(value: object) -> tuple[str, ...]:
    """Audit kinds from a comma-separated string; unknown kinds are a ProtocolError."""
    if not isinstance(value, str):
        raise ProtocolError("config field 'kinds' must be a comma-separated string")
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad:
        raise ProtocolError(f"unknown audit kinds {bad}; allowed: {', '.join(ALL_KINDS)}")
    return kinds


def dp_steps_taken(cfg: Config, ledger_state: dict[str, Any] | None) -> int:
    """Local training steps of the run: from the DP ledger, else (no DP) the planned total."""
    if ledger_state:
        ledger = Ledger(cfg.privacy.accountant)
        ledger.load_state_dict(ledger_state)
        if ledger.steps > 0:
            return ledger.steps
    return cfg.federation.rounds * cfg.train.local_steps


def _plain_student(cfg: Config, tokenizer: Any, texts: list[str], steps: int, seed: int,
                 device: torch.device) -> torch.nn.Module:
    model = student_lm(cfg, len(tokenizer))
    data = tokenise(tokenizer, texts, max_length=cfg.data.max_length, prompt_length=cfg.distill.prompt_length,
                    with_privacy=False)
    train_plain(model, data, steps=steps, lr=cfg.train.lr, batch_size=cfg.train.batch_size,
                  rng=np.random.default_rng(seed), device=device)
    return model.eval()


def finetune_baseline(cfg: Config, tokenizer: Any, train_texts: list[str], steps: int, partition_id: int,
                      device: torch.device) -> torch.nn.Module:
    """Same-size student, same initial weights as the global one, fine-tuned with plain (non-private)
    cross-entropy on the client's training records (canaries included) for ``steps`` steps (capped
    at ``FINETUNE_MAX_STEPS``): the comparison run of the memorisation audit (docs/METHODS.md §8)."""
    steps = max(1, min(steps, FINETUNE_MAX_STEPS))
    return _plain_student(cfg, tokenizer, train_texts, steps, cfg.run.seed * 1000 + 500 + partition_id, device)


def public_reference_model(cfg: Config, tokenizer: Any, steps: int, device: torch.device) -> torch.nn.Module:
    """The MIA reference model: a same-size student trained on the public corpus (module docstring)."""
    steps = max(REFERENCE_MIN_STEPS, min(steps, FINETUNE_MAX_STEPS))
    texts = list(public_corpus(cfg.run.seed, cfg.data.public_records))
    return _plain_student(cfg, tokenizer, texts, steps, cfg.run.seed * 1000 + 900, device)


def _models(node: runtime.NodeState, context: Context, request: runtime.Request) -> dict[str, torch.nn.Module]:
    """The client's teacher (if its method used one), last local student and the global student."""
    cfg, vocab = node.cfg, len(request.tokenizer)
    models: dict[str, torch.nn.Module] = {}
    state = context.state.array_records
    if "teacher" in state:
        teacher = teacher_lm(cfg, vocab, seed=cfg.run.seed + 1 + node.partition_id)
        teacher.load_state_dict(state["teacher"].to_torch_state_dict())
        models["teacher"] = teacher
    if "student" in state:
        student = student_lm(cfg, vocab)
        load_travelling_state(student, state["student"].to_torch_state_dict())
        models["student"] = student
    glob = student_lm(cfg, vocab)
    load_travelling_state(glob, he_client.global_state(node, request, glob))
    models["global"] = glob
    return {name: m.to(node.device).eval() for name, m in models.items()}


def _save(cfg: Config, partition_id: int, models: dict[str, torch.nn.Module], directory: Path) -> list[str]:
    """Keep teacher and local student in the node's own directory (``directory``, never the server's run
    directory) for a later ``fedveil audit`` on the node; never fails the audit."""
    saved: list[str] = []
    for name in ("teacher", "student"):
        if name in models:
            try:
                save_checkpoint(models[name], directory / name,  # type: ignore[arg-type]
                                meta={"run_id": cfg.run.run_id, "partition_id": partition_id, "model": name})
                saved.append(name)
            except OSError as exc:
                log.warning("client %d: could not save its %s checkpoint: %s", partition_id, name, exc)
    return saved


def audit_delta(cfg: Config, ledger_state: dict[str, Any] | None, n_train: int) -> float:
    """δ of the node's guarantee: its ledger's when it has one, else the configured or default δ
    for its training-set size (canary copies included), the rule training used."""
    if ledger_state and ledger_state.get("delta"):
        return float(ledger_state["delta"])
    return cfg.privacy.delta or default_delta(n_train)


def measure_node(cfg: Config, tokenizer: Any, pid: int, models: dict[str, torch.nn.Module], own: list[str],
                 *, steps: int, delta: float, kinds: tuple[str, ...], device: torch.device,
                 progress: bool = False) -> dict[str, Any]:
    """The one audit pipeline of a node (docs/METHODS.md §8), for ``query.audit`` and ``fedveil audit``.

    Trains the comparison models the kinds need (fine-tuned baseline, public reference model) and
    measures every model in ``models`` against the node's members, non-members and canaries.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.run.seed * 7 + pid)
    encode = training_encode(tokenizer)
    shared = canary_plan(cfg, tokenizer)
    members, nonmembers = mia_split(cfg, pid, own)
    plan = node_plan(cfg, pid, len(own), shared)
    data = AuditData(encode=encode, members=members, nonmembers=nonmembers, max_length=cfg.data.max_length,
                     canaries=client_canaries(plan, pid), references=reference_candidates(cfg, encode, shared),
                     delta=delta, release_scores=cfg.audit.release_scores)
    reference = public_reference_model(cfg, tokenizer, steps, device) if {"mia", "epsilon"} & set(kinds) else None
    if kinds:
        models = {**models, "finetuned": finetune_baseline(cfg, tokenizer, with_canaries(cfg, pid, own, tokenizer),
                                                           steps, pid, device)}
    t1 = time.perf_counter()
    result = audit_client_models(models, data, kinds, reference_model=reference, progress=progress)
    result["meta"] = {"partition_id": pid, "models": sorted(models), "kinds": list(kinds), "dp_steps": steps,
                      "finetune_steps": max(1, min(steps, FINETUNE_MAX_STEPS)), "n_members": len(members),
                      "n_nonmembers": len(nonmembers), "delta": delta, "mia_split": "secret random split",
                      "canary_share": canary_share(plan, pid, len(members)),
                      "withdrawn_exposure_canaries": sorted(c.canary_id for c in plan if c.client_index == pid
                                                            and not c.inserted and not is_one_run(c)),
                      "release_scores": cfg.audit.release_scores,
                      "reference_model": "student preset trained on the public corpus", "device": str(device),
                      "train_seconds": t1 - t0, "audit_seconds": time.perf_counter() - t1}
    return result


def audit_node(node: runtime.NodeState, context: Context, request: runtime.Request,
               kinds: tuple[str, ...]) -> dict[str, Any]:
    """All audits of one node: gather its models, save them, run :func:`measure_node` (numbers only)."""
    cfg, tokenizer, pid = node.cfg, request.tokenizer, node.partition_id
    models = _models(node, context, request)
    directory = node.directory(context)
    saved = _save(cfg, pid, models, directory)
    own = node.texts()
    ledger = load_ledger(directory, cfg.privacy.accountant).state_dict()
    n_train = len(with_canaries(cfg, pid, own, tokenizer))
    result = measure_node(cfg, tokenizer, pid, models, own, steps=dp_steps_taken(cfg, ledger),
                          delta=audit_delta(cfg, ledger, n_train), kinds=kinds, device=node.device)
    result["meta"]["saved_checkpoints"] = saved
    return result


def handle_audit(msg: Message, context: Context) -> Message:
    """``query.audit``: audit this node's models and reply with ConfigRecord ``audit`` (JSON strings).

    The request carries ``arrays`` (final global weights, plaintext or CKKS) and ``config`` with
    ``server-round``, ``tokenizer-sha256`` and ``kinds``; it is validated like a training request.
    """
    node = runtime.NodeState.from_context(context)
    request = runtime.parse_request(msg, context)
    kinds = parse_kinds(require_config(msg.content, "config").get("kinds", ",".join(ALL_KINDS)))
    result = audit_node(node, context, request, kinds)
    record = ConfigRecord({key: json.dumps(value, allow_nan=False, default=_json_default)
                           for key, value in _finite_json(result).items()})
    return Message(RecordDict({"audit": record}), reply_to=msg)


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.floating):
        return _finite_json(float(value))
    raise TypeError(f"audit result holds a {type(value).__name__}, which is not JSON")


def _finite_json(value: Any) -> Any:
    """Replace NaN / inf by None (JSON has no such numbers) all the way down."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value
