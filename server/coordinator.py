"""The server's run: set-up, the federated rounds, the final checkpoint and statement.

The server trains the shared tokenizer on public text only, provisions HE keys when asked,
greets the nodes, runs the strategy and records the run. Any exception marks the run failed
in the store before it propagates, so the store never shows a half-finished run as running.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from distill.textdata import public_corpus
from distill.hf import run_tokenizer, travelling_state
from distill.pretrain import public_student
from distill.tokenizer import save_tokenizer, tokenizer_to_json, train_tokenizer
from fedveil.config import Config, from_run_config, to_dict
from fedveil.store import MetricRow, Store, default_db_url
from server.audits import round_audit_fn, run_audits
from server.nodes import greet, register, restore_ledgers, wait_for_nodes
from server.statement import privacy_statement
from server.strategies.fedavg import PrivateFedAvg, resume_point
from server.validation import ReplyPolicy

log = logging.getLogger("fedveil.server")


def resolve_url(cfg: Config) -> str:
    """The store URL: the config's, else $FEDVEIL_DB, else ./runs/fedveil.db."""
    return cfg.store.url or default_db_url()


def run_federation(grid: Grid, run_config: dict[str, Any]) -> str:
    """Run one experiment end to end; returns the run id."""
    cfg = from_run_config(run_config)
    run_id = cfg.run.run_id or uuid.uuid4().hex[:12]
    cfg = cfg.replace(run=dataclasses.replace(cfg.run, run_id=run_id))
    run_dir = (Path(cfg.run.run_dir) / run_id).resolve()
    store = Store(resolve_url(cfg))
    if cfg.run.resume:
        previous = store.get_run(run_id)["run"]  # RunNotFound names the id
        if previous["status"] == "completed":
            raise ValueError(f"run {run_id} is already completed; nothing to resume")
    else:
        method = cfg.fd.mode if cfg.data.task == "digits" else cfg.train.method
        # The stored config never holds the store URL: it may carry credentials (issue 13 item 5).
        stored_cfg = to_dict(cfg.replace(store=dataclasses.replace(cfg.store, url="")))
        store.create_run(stored_cfg, run_id=run_id, name=cfg.run.name, method=method,
                         task=cfg.data.task, he_enabled=cfg.he.enabled, num_clients=cfg.federation.clients,
                         num_rounds=cfg.federation.rounds, seed=cfg.run.seed, run_dir=str(run_dir))
    t0 = time.perf_counter()
    try:
        store.mark_running(run_id)
        if cfg.data.task == "digits":
            from server.fd_coordinator import run_digits
            run_digits(grid, cfg, store, run_id, run_dir)
        else:
            _run(grid, cfg, store, run_id, run_dir)
        store.complete_run(run_id, wall_seconds=time.perf_counter() - t0)
    except BaseException as exc:
        store.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        store.close()
    return run_id


def _run(grid: Grid, cfg: Config, store: Store, run_id: str, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fed = cfg.federation
    tokenizer = run_tokenizer(cfg.model.student, cfg.model.teacher, lambda: train_tokenizer(
        public_corpus(cfg.run.seed, cfg.data.public_records), vocab_size=cfg.data.vocab_size))
    tok_dir = save_tokenizer(tokenizer, run_dir / "tokenizer")
    store.add_artifact(run_id, "tokenizer", str(tok_dir / "tokenizer.json"))
    # Public warm start (no ε: public text only), cached across runs by its recipe's hash (docs/METHODS.md §4).
    model, warm = public_student(cfg, tokenizer, Path(cfg.run.run_dir) / "cache")
    if warm is not None:
        store.add_artifact(run_id, "public-student", Path(warm["path"]) / "model.safetensors")
        log.info("public warm start %s (%s)", warm["key"][:16], "cached" if warm["cached"] else
                 f"{warm['seconds']} s")
    initial = ArrayRecord(travelling_state(model))
    checkpoint = run_dir / "checkpoint.npz"
    done = 0
    point = resume_point(checkpoint, store.get_run(run_id)["run"]["last_complete_round"]) if cfg.run.resume else None
    if point is not None:
        initial, done = point
        log.info("resuming run %s after round %d", run_id, done)

    nodes = wait_for_nodes(grid, fed.min_clients, fed.round_timeout)
    tok_json = tokenizer_to_json(tokenizer)
    hello = greet(grid, nodes, fed.round_timeout, {"tokenizer": tok_json})
    node_to_client, num_examples = register(store, run_id, hello)
    total_examples = sum(num_examples.values())
    restored = restore_ledgers(grid, store, run_id, node_to_client, fed.round_timeout) if done else {}

    common: dict[str, Any] = {"tokenizer-sha256": hashlib.sha256(tok_json.encode()).hexdigest(),
                              "he-scale": float(max(total_examples, 1))}
    kwargs: dict[str, Any] = dict(
                  store=store, run_id=run_id, node_to_client=node_to_client, min_clients=fed.min_clients,
                  max_payload_bytes=int(fed.max_payload_mb * 2**20), max_grad_norm=cfg.privacy.max_grad_norm,
                  fraction_train=fed.fraction_train, round_offset=done, checkpoint=checkpoint,
                  num_examples=num_examples, policy=ReplyPolicy.of(cfg, local_steps=cfg.train.local_steps),
                  aggregator=fed.aggregator, trim_fraction=fed.trim_fraction,
                  ledger={c: (int(r["steps"]), float(r["epsilon"])) for c, r in store.latest_ledger(run_id).items()},
                  restored=restored)
    strategy: PrivateFedAvg
    if cfg.he.enabled:
        from server.strategies.he_fedavg import HEFedAvg
        template = {k: v.numpy() for k, v in travelling_state(model).items()}
        strategy = HEFedAvg(cfg=cfg, run_dir=run_dir, template=template, **kwargs)
    else:
        strategy = PrivateFedAvg(**kwargs)
    if not done:  # round 0: the student every client starts from (public-only, or random)
        strategy.evaluate_initial(grid, initial, ConfigRecord(common), fed.round_timeout)
        store.add_metrics(run_id, [MetricRow("uniform-perplexity", float(len(tokenizer)), 0)])
    per_round = round_audit_fn(cfg, store, run_id, tokenizer)  # None unless audit.every_round (and HE off)
    evaluate_fn = None if per_round is None else (lambda r, arrays: per_round(r + done, arrays))
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=fed.rounds - done, timeout=fed.round_timeout,
                            evaluate_fn=evaluate_fn,
                            train_config=ConfigRecord(common), evaluate_config=ConfigRecord(common))
    final = result.arrays
    if final is not None and cfg.he.enabled:  # under HE the server holds only ciphertext: keep that
        blob = run_dir / "global-encrypted.npz"
        blobs: dict[str, Any] = {k.replace(".", "_"): v.numpy() for k, v in final.items()}
        np.savez(blob, **blobs)
        store.add_artifact(run_id, "global-student-encrypted", str(blob))
    elif final is not None:
        from distill.hf import load_travelling_state, merged
        from distill.models import save_checkpoint
        load_travelling_state(model, final.to_torch_state_dict())
        model = merged(model)
        ckpt = save_checkpoint(model, run_dir / "global", meta={"run_id": run_id, "rounds": fed.rounds})
        store.add_artifact(run_id, "global-student", str(ckpt / "model.safetensors"))
    store.set_privacy_statement(run_id, privacy_statement(cfg, store.latest_ledger(run_id)))
    run_audits(grid, cfg, store, run_id, run_dir, tokenizer, final, node_to_client)
