"""Local training of a digits client: its data, its KMeans filter and (DP-)SGD rounds (docs/METHODS.md §2, §6).

With ``privacy.enabled`` every step on private records is DP-SGD (Opacus, Poisson sampling,
planned σ), so the classifier — and the soft labels computed from it, a post-processing — are
covered by the client's ε.  The distillation term only sees public proxy samples and public
aggregated targets, so its exact gradient joins each noised step without clipping or noise and
costs no ε (:func:`_dp_epochs`).  Without DP the joint-loss library loops of :mod:`distill.classifier`
run instead (one step = one private batch + one proxy batch, ``CE + μ·τ²·KL``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import Context

from privacy.dp.randomness import NoiseSource
from privacy.dp import (
    DPPlan,
    DPSession,
    Ledger,
    PrivacyBudgetExhausted,
    default_delta,
    plan_noise,
    poisson_batches,
    run_dp_steps,
)
from client.protocol import ProtocolError
from distill.classifier import train_distill_epochs, train_epochs
from distill.digits import ClientData, DigitsTask, digits_clients
from distill.fd import kd_per_example
from distill.kmeans_filter import KMeansDensityFilter
from fedveil.config import Config, from_run_config


@dataclass(frozen=True)
class DigitsNode:
    """One node of the digits task: configuration, partition, the shared task and its own data."""

    cfg: Config
    partition_id: int
    task: DigitsTask
    data: ClientData


@dataclass(frozen=True)
class RoundOutcome:
    """What a local training round reports."""

    metrics: dict[str, float | int]
    mode: str


@lru_cache(maxsize=8)
def _config(items: tuple[tuple[str, object], ...]) -> Config:
    return from_run_config(dict(items))


def load_node(context: Context) -> DigitsNode:
    """This node's configuration and data from the run config and ``partition-id`` of the node config."""
    cfg = _config(tuple(sorted(context.run_config.items())))
    if "partition-id" not in context.node_config:
        raise ProtocolError("node config has no 'partition-id'; start the SuperNode with "
                            "--node-config \"partition-id=N\"")
    pid = int(context.node_config["partition-id"])
    if not 0 <= pid < cfg.federation.clients:
        raise ProtocolError(f"partition-id {pid} is outside [0, {cfg.federation.clients - 1}] (federation.clients)")
    task, clients = digits_clients(cfg.run.seed, cfg.fd.proxy_size, cfg.federation.clients, cfg.data.partition,
                                   cfg.data.classes_per_client, cfg.data.alpha)
    return DigitsNode(cfg, pid, task, clients[pid])


def fit_filter(node: DigitsNode) -> KMeansDensityFilter:
    """The client's KMeans density filter on its raw private images, fitted once per run (§6)."""
    fd = node.cfg.fd
    return KMeansDensityFilter(clusters_per_class=fd.clusters_per_class, quantile=fd.quantile,
                               random_state=node.cfg.run.seed + node.partition_id).fit(node.data.X, node.data.y)


def planned_steps(cfg: Config, n_records: int) -> int:
    """DP-SGD steps of the whole run: ⌈n/B⌉ per epoch × (warm-up + (rounds − 1) × local epochs)."""
    per_epoch = math.ceil(n_records / cfg.fd.batch_size)
    return max(1, per_epoch * (cfg.fd.warmup_epochs + (cfg.federation.rounds - 1) * cfg.fd.local_epochs))


@lru_cache(maxsize=64)
def _plan(target: float, delta: float, n: int, batch: int, steps: int, clip: float, accountant: str) -> DPPlan:
    return plan_noise(target_epsilon=target, delta=delta, n_records=n, batch_size=batch, total_steps=steps,
                      max_grad_norm=clip, accountant=accountant)


def dp_plan(cfg: Config, n_records: int) -> DPPlan | None:
    """σ fixed before round 1 so the planned steps end at the target ε (docs/METHODS.md §2); None without DP."""
    p = cfg.privacy
    if not p.enabled:
        return None
    delta = p.delta or default_delta(n_records)
    return _plan(p.target_epsilon, delta, n_records, cfg.fd.batch_size, planned_steps(cfg, n_records),
                 p.max_grad_norm, p.accountant)


def _dp_epochs(model: torch.nn.Module, node: DigitsNode, epochs: int, plan: DPPlan, ledger: Ledger,
               proxy: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | None,
               rng: np.random.Generator, noise: NoiseSource) -> tuple[list[float], int, str]:
    """DP-SGD steps on ``CE(private) + μ·τ²·KL(proxy)`` where only the private part is clipped and noised (§2, §6).

    The private CE of a Poisson batch goes through DP-SGD (clip, sum, Gaussian noise, /B).  The
    distillation term sees only public proxy samples and public aggregated targets, so its exact
    gradient is added to the noised one (Opacus' step hook, between noising and the Adam step):
    post-processing, no ε.  Each step takes ``⌈P'/steps per epoch⌉`` voted proxy samples, so an
    epoch covers them once.  Noise-only steps (empty Poisson batches) carry no distillation term.
    """
    cfg, fd = node.cfg, node.cfg.fd
    X = torch.as_tensor(node.data.X, dtype=torch.float32)
    y = torch.as_tensor(node.data.y, dtype=torch.int64)
    per_epoch = math.ceil(len(y) / fd.batch_size)
    session = DPSession(model, lr=fd.lr, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                        expected_batch_size=fd.batch_size, mode=cfg.privacy.grad_sample_mode,
                        generator=noise.generator)
    if proxy is not None:
        Xp = torch.as_tensor(proxy[0], dtype=torch.float32)
        Tp = torch.as_tensor(proxy[1], dtype=torch.float32)
        params = [p for p in model.parameters() if p.requires_grad]
        per_step = math.ceil(len(Xp) / per_epoch)
        queue: list[np.ndarray] = []

        def add_public_kd(_: torch.optim.Optimizer) -> None:
            if not queue:
                perm = rng.permutation(len(Xp))
                queue.extend(perm[s : s + per_step] for s in range(0, len(Xp), per_step))
            j = torch.as_tensor(queue.pop(0))
            session.module.disable_hooks()  # type: ignore[operator]
            kd = fd.mu * kd_per_example(model(Xp[j]), Tp[j], fd.temperature).mean()
            grads = torch.autograd.grad(kd, params)
            session.module.enable_hooks()  # type: ignore[operator]
            for p, g in zip(params, grads):
                assert p.grad is not None
                p.grad.add_(g)

        session.optimizer.attach_step_hook(add_public_kd)  # type: ignore[attr-defined]

    def loss_fn(idx: np.ndarray) -> torch.Tensor:
        ix = torch.as_tensor(idx)
        return torch.nn.functional.cross_entropy(session.module(X[ix]), y[ix], reduction="none")

    batches = poisson_batches(len(y), plan.sample_rate, epochs * per_epoch, noise.rng)
    losses = run_dp_steps(session, batches, loss_fn, ledger, plan.sample_rate)
    session.close()
    return losses, sum(1 for b in batches if len(b) == 0), session.mode


def train_classifier(model: torch.nn.Module, node: DigitsNode, epochs: int, plan: DPPlan | None, ledger: Ledger,
                     proxy: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | None,
                     rng: np.random.Generator, noise: NoiseSource, server_round: int) -> RoundOutcome:
    """``epochs`` local epochs: CE on private data, plus ``μ·τ²·KL`` on voted proxy samples when given (§6).

    Raises
    ------
    PrivacyBudgetExhausted
        The round's DP steps would take ε past the target (the client refuses the round).
    """
    cfg, fd, n = node.cfg, node.cfg.fd, len(node.data.y)
    if plan is None:
        if epochs == 0:
            loss = float("nan")
        elif proxy is None:
            loss = train_epochs(model, node.data.X, node.data.y, epochs, fd.lr, fd.batch_size, rng)
        else:
            loss = train_distill_epochs(model, node.data.X, node.data.y, proxy[0], proxy[1], epochs, fd.lr,
                                        fd.batch_size, rng, mu=fd.mu, temperature=fd.temperature)
        metrics: dict[str, float | int] = {"epsilon": -1.0, "delta": 0.0, "noise-multiplier": 0.0,
                                           "sample-rate": min(1.0, fd.batch_size / n), "steps": 0}
        if math.isfinite(loss) and cfg.privacy.release_train_loss:  # private records: only when asked, stated
            metrics["train-loss"] = loss
        return RoundOutcome(metrics, "non-private")
    round_steps = epochs * math.ceil(n / fd.batch_size)
    losses: list[float] = []
    if round_steps == 0:
        empty, mode, eps = 0, cfg.privacy.grad_sample_mode, ledger.epsilon(plan.delta)
    else:
        # The accountant is the slow part of a round: its answer for the projected history is
        # also the ε after the round (the ledger then holds exactly that history).
        eps = ledger.epsilon_after(plan.delta, plan.noise_multiplier, plan.sample_rate, round_steps)
        if eps > plan.target_epsilon * (1 + 1e-9):
            raise PrivacyBudgetExhausted(
                f"round {server_round} would raise epsilon to {eps:.3f} > budget {plan.target_epsilon} "
                f"({ledger.steps} steps already taken); refusing")
        losses, empty, mode = _dp_epochs(model, node, epochs, plan, ledger, proxy, rng, noise)
    metrics = {"epsilon": eps, "delta": plan.delta, "noise-multiplier": plan.noise_multiplier,
               "sample-rate": plan.sample_rate, "steps": ledger.steps, "round-steps": round_steps,
               "empty-batches": empty}
    if losses and cfg.privacy.release_train_loss:  # computed on private batches: only when asked, stated
        metrics["train-loss"] = float(np.mean(losses))
    return RoundOutcome(metrics, mode)
