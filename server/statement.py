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
    lines.append("Not covered: the tokenizer (trained on public text only), the run configuration and the number "
                 "of records per client, which the server learns.")
    return "\n".join(lines)
