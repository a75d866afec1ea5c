"""The privacy statement stored with every run (docs/METHODS.md §2, "Privacy statement (ours)").

Never a bare ε: mechanism, σ, C, q, steps, accountant, δ, the unit protected, and what the
guarantee does not cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedveil.config import Config

#: Said by every run whose DP noise was seeded from public values (privacy.reproducible_noise, docs/METHODS.md §2).
REPRODUCIBLE_NOISE_LINE = ("NOT PRIVATE AGAINST THE SERVER: privacy.reproducible_noise = true seeded the DP noise and "
                           "Poisson sampling from the run seed, which the server knows; epsilon holds only against "
                           "readers of the released model. For tests and benchmarks only.")


def guarantee_lines(cfg: Config, unit: str) -> list[str]:
    """What ε refers to and who computes it (every DP task states these, docs/METHODS.md §2)."""
    return [f"Neighbouring relation: add/remove one {unit} of one client (Poisson sampling); inserted audit "
            "canaries count as records. Epsilon is per client and per record: it does not hide a client's "
            "participation or its record count.",
            "Who counts: each node computes its epsilon from its own ledger (every DP step it took, kept in the "
            "node's own directory and written before an update leaves it; a server cannot reset it). The "
            "figures below are copies from each node's last accepted reply."]


def release_lines(cfg: Config, *, evaluation: str, teacher: bool = False, audits: bool = True) -> list[str]:
    """Everything computed on private records that leaves a node without DP protection (issue 13 item 3).

    ``evaluation`` names what the evaluate replies carry for this task; ``teacher`` adds the clients'
    non-DP teachers' held-out NLL; ``audits`` is whether the task runs the end-of-run audits.
    """
    items = ["each client's record count (hello; its aggregation weight)",
             "per-round DP parameters (sigma, q, steps, epsilon, delta), empty-batch counts and timings",
             evaluation]
    if teacher:
        items.append("held-out NLL sums and token counts of each client's non-DP teacher (teacher-perplexity)")
    if cfg.privacy.release_train_loss:
        items.append("the mean training loss on private batches (privacy.release_train_loss = true)")
    if audits and cfg.audit.enabled:
        items.append("end-of-run audit summaries per client and model: exposure per canary, memorisation rates, "
                     "MIA AUC and TPR at fixed FPR, empirical epsilon lower bounds with their parameters")
        if cfg.audit.release_scores:
            items.append("per-record audit statistics: ROC points, score histograms and thresholds "
                         "(audit.release_scores = true)")
    return ["Released outside epsilon (computed on private records, not DP-protected): " + "; ".join(items) + "."]


def privacy_statement(cfg: Config, ledger: Mapping[int, Mapping[str, Any]]) -> str:
    """Compose the statement from the configuration and each client's last ledger entry."""
    lines: list[str] = []
    p = cfg.privacy
    if not p.enabled:
        lines.append("No differential privacy: the student was trained with plain SGD/Adam. "
                     "No formal guarantee holds for any client's records.")
    else:
        lines.append(f"Mechanism: DP-SGD (Opacus, per-example clipping C = {p.max_grad_norm}, Gaussian noise, "
                     f"Poisson sampling), {p.accountant.upper()} accountant, target epsilon = {p.target_epsilon} for "
                     f"the whole federation ({cfg.federation.rounds} rounds x {cfg.train.local_steps} local steps).")
        lines.append("Unit protected: one record of one client, against anyone who sees that client's "
                     "updates (including the server and the released global student).")
        lines += guarantee_lines(cfg, "text record")
        if p.reproducible_noise:
            lines.append(REPRODUCIBLE_NOISE_LINE)
        for client in sorted(ledger):
            e = ledger[client]
            lines.append(f"Client {client}: epsilon = {e['epsilon']:.3f} at delta = {e['delta']:.1e} "
                         f"(sigma = {e['noise_multiplier']:.4f}, q = {e['sample_rate']:.4f}, "
                         f"{e['steps']} steps, {e.get('grad_sample_mode') or 'n/a'} clipping).")
    method = cfg.train.method
    if method in ("dp-kd", "dp-opd"):
        if cfg.train.teacher_private:
            lines.append("Not covered: each client's teacher was trained WITHOUT differential privacy on the same "
                         "private records. The student's epsilon treats the teacher as fixed, so it holds only on "
                         "condition that the teacher is never released and that nothing leaks through its soft "
                         "targets (a record changes the teacher, hence every other record's loss). The canary "
                         "audit measures the actual leakage.")
        else:
            lines.append("Teacher provenance: trained on public (PII-free) text only; it holds no private records.")
    if cfg.distill.swing and method != "dp-sft":
        lines.append("Swing-style per-token temperatures and teacher-logit noise are a heuristic to reduce "
                     "memorisation of private tokens; they are not a differential-privacy guarantee.")
    if cfg.he.enabled:
        lines.append(f"Aggregation under CKKS ({cfg.he.profile} profile): the server adds ciphertexts and holds no "
                     "secret key; HE protects updates in transit and at the server, not the released model.")
    else:
        lines.append("Aggregation in plaintext: the server sees each client's (DP-noised) update.")
    teacher = method in ("dp-kd", "dp-opd") and cfg.train.teacher_steps > 0
    lines += release_lines(cfg, teacher=teacher, evaluation="held-out NLL sums and token counts of the global "
                           "student on each client's held-out shard (perplexity)")
    lines.append("Not covered: the tokenizer (trained on public text only) and the run configuration, which the "
                 "server chooses.")
    return "\n".join(lines)
