"""The server's run for ``data.task = "digits"``: soft-label federated distillation (docs/METHODS.md §6).

Loads the public CKKS context when HE is on (keys are provisioned before the server starts), greets the
nodes, runs :class:`server.strategies.fd.SoftLabelFD` for ``federation.rounds`` rounds and
stores the run's privacy statement, which says what the clients' ε covers in this task.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from distill.classifier import make_classifier
from distill.digits import digits_clients
from fedveil.config import Config
from fedveil.store import Store
from server.nodes import greet, register, wait_for_nodes
from server.statement import REPRODUCIBLE_NOISE_LINE, guarantee_lines, release_lines
from server.strategies.fd import SoftLabelFD
from server.validation import ReplyPolicy

log = logging.getLogger("fedveil.server")


def public_key_dir(cfg: Config) -> Path:
    """The key directory holding ``public.ctx``; the server never creates keys (docs/METHODS.md §1).

    ``fedveil run`` and ``fedveil deploy local`` provision keys before the server starts.
    """
    if not cfg.he.key_dir or not (Path(cfg.he.key_dir) / "public.ctx").exists():
        raise FileNotFoundError("he.enabled is true but he.key_dir holds no public.ctx: create keys with "
                                "`fedveil keys init --out DIR` and set he.key_dir (fedveil run does this)")
    return Path(cfg.he.key_dir)


def digits_privacy_statement(cfg: Config, ledger: Mapping[int, Mapping[str, Any]]) -> str:
    """The run's statement (docs/METHODS.md §2, ours): mechanism, per-client ε, and what ε covers in FD."""
    p, fd, mode = cfg.privacy, cfg.fd, cfg.fd.mode
    lines: list[str] = []
    if p.enabled:
        lines.append(f"Mechanism: DP-SGD on each client's MLP classifier (Opacus, per-example clipping C = "
                     f"{p.max_grad_norm}, Gaussian noise, Poisson sampling, expected batch {fd.batch_size}), "
                     f"{p.accountant.upper()} accountant, target epsilon = {p.target_epsilon} for the whole run "
                     f"({fd.warmup_epochs} warm-up epochs + {cfg.federation.rounds - 1} rounds x {fd.local_epochs} "
                     "local epochs, ceil(n/B) steps per epoch, sigma fixed before round 1).")
        lines.append("Unit protected: one private record of one client, against everyone who sees what that "
                     "client shares (the server, the other clients).")
        lines += guarantee_lines(cfg, "image")
        if p.reproducible_noise:
            lines.append(REPRODUCIBLE_NOISE_LINE)
        for client in sorted(ledger):
            e = ledger[client]
            lines.append(f"Client {client}: epsilon = {e['epsilon']:.3f} at delta = {e['delta']:.1e} "
                         f"(sigma = {e['noise_multiplier']:.4f}, q = {e['sample_rate']:.4f}, {e['steps']} steps, "
                         f"{e.get('grad_sample_mode') or 'n/a'} clipping).")
    else:
        lines.append("No differential privacy: the classifiers were trained with plain Adam. No formal guarantee "
                     "holds for any client's records.")
    if mode in ("fd", "fd-kmeans"):
        covered = ("They are a post-processing of the DP-trained classifier, so the client's epsilon covers them; "
                   if p.enabled else "")
        lines.append(f"What is shared: soft labels on a public proxy set of {fd.proxy_size} images (carved from the "
                     "training pool, disjoint from every client; public, so using it costs no privacy). " + covered +
                     "distilling from the aggregate is post-processing of other clients' DP outputs.")
        if mode == "fd-kmeans" or cfg.distill.swing:
            lines.append("Not covered by epsilon: the KMeans filter is fitted on each client's raw private images "
                         "without DP. Its decisions (which proxy samples a client votes on" +
                         (", and the swing-style per-sample temperatures and noise" if cfg.distill.swing else "") +
                         ") reveal where the client's data lie, as do the filter precision/recall metrics sent "
                         "to the server.")
        if cfg.distill.swing:
            lines.append("Swing-style temperatures and logit noise on soft labels are a heuristic against "
                         "memorisation, not a differential-privacy guarantee.")
    elif mode == "fedavg":
        lines.append("What is shared: the MLP weights after each round" +
                     (", a DP output covered by the client's epsilon." if p.enabled else "."))
    else:
        lines.append("What is shared: nothing but metrics (local-only baseline).")
    if cfg.he.enabled and mode in ("fd", "fd-kmeans"):
        lines.append(f"Aggregation under CKKS ({cfg.he.profile} profile): labels and vote masks are encrypted, the "
                     "server only adds ciphertexts and holds no secret key. Every client holds the secret key and "
                     "can decrypt the summed labels and per-sample vote counts (not another client's upload unless "
                     "it intercepts it; deployment uses TLS).")
    elif mode in ("fd", "fd-kmeans", "fedavg"):
        lines.append("Aggregation in plaintext: the server sees each client's upload"
                     + (", including its vote mask." if mode != "fedavg" else "."))
    lines += release_lines(cfg, audits=False, evaluation="each client's accuracy on the fixed test set and on the "
                           "test images of its own classes (which reveals its classes)")
    lines.append("Not covered: the run configuration, which the server chooses.")
    return "\n".join(lines)


def run_digits(grid: Grid, cfg: Config, store: Store, run_id: str, run_dir: Path) -> None:
    """Run the digits federation end to end and record it in ``store``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fed, fd = cfg.federation, cfg.fd
    if cfg.he.enabled and fd.mode == "fedavg":
        raise ValueError("he.enabled = true with fd.mode = 'fedavg' is not supported for data.task = 'digits': "
                         "encrypted aggregation covers the soft-label modes; choose fd.mode = fd or fd-kmeans")
    if cfg.run.resume:
        raise ValueError("run.resume is not supported for data.task = 'digits': each client's classifier, filter "
                         "and ledger live in its Flower Context, which a new simulation does not have")
    # Fails here, with the partitioner's reason, rather than on every client (e.g. too few clients
    # for a classes split: clients + classes_per_client - 1 must cover the 10 classes).
    task, _ = digits_clients(cfg.run.seed, fd.proxy_size, fed.clients, cfg.data.partition,
                             cfg.data.classes_per_client, cfg.data.alpha)
    he_context = None
    if cfg.he.enabled and fd.mode in ("fd", "fd-kmeans"):
        from privacy.he.keys import load_public_context
        key_dir = public_key_dir(cfg)
        he_context = load_public_context(key_dir / "public.ctx")

    nodes = wait_for_nodes(grid, fed.min_clients, fed.round_timeout)
    hello = greet(grid, nodes, fed.round_timeout, {"task": "digits"})
    node_to_client, num_examples = register(store, run_id, hello, teacher_provenance="none")
    log.info("digits %s: %d clients, partition %s, proxy %d, HE %s", fd.mode, len(hello), cfg.data.partition,
             len(task.X_proxy), "on" if he_context is not None else "off")

    initial = ArrayRecord()
    if fd.mode == "fedavg":
        initial = ArrayRecord(make_classifier(fd.hidden, seed=cfg.run.seed).state_dict())
    strategy = SoftLabelFD(mode=fd.mode, n_proxy=len(task.X_proxy), n_classes=task.n_classes,
                           he_context=he_context, he_profile=cfg.he.profile, store=store, run_id=run_id,
                           node_to_client=node_to_client, min_clients=fed.min_clients,
                           max_payload_bytes=int(fed.max_payload_mb * 2**20), max_grad_norm=cfg.privacy.max_grad_norm,
                           fraction_train=fed.fraction_train, num_examples=num_examples,
                           policy=ReplyPolicy.of(cfg))
    # K, the public client count: under HE each upload is weighted 1/K so all sums stay within [0, 1].
    common = ConfigRecord({"he-clients": float(max(fed.clients, len(hello), 1))})
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=fed.rounds, timeout=fed.round_timeout,
                            train_config=common, evaluate_config=ConfigRecord(dict(common)))
    final = result.evaluate_metrics_clientapp.get(fed.rounds)
    if final is not None:
        log.info("digits %s: final mean client accuracy %.4f", fd.mode, float(np.asarray(final["accuracy"])))
    store.set_privacy_statement(run_id, digits_privacy_statement(cfg, store.latest_ledger(run_id)))
