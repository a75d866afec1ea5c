"""Audit-side writes of the store: canaries, audits with exposures, ε bounds, artifacts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fedveil.store import writes
from fedveil.store.base import StoreBase
from fedveil.store.convert import check_choice, check_number, json_safe, opt_number
from fedveil.store.models import (
    AUDIT_KINDS,
    AUDIT_MODELS,
    BOUND_METHODS,
    EPS_LB_FLAG,
    Audit,
    EpsilonBound,
    Run,
)
from fedveil.store.rows import CanaryRow, ExposureRow


def add_flag_to(run: Run, flag: str) -> None:
    """Append ``flag`` to a run's flags unless it is there already."""
    if not flag:
        raise ValueError("flag must be a non-empty string")
    flags = list(run.flags or [])
    if flag not in flags:
        # Assign a new list: in-place mutation of a JSON column is not tracked.
        run.flags = [*flags, flag]


class AuditingStore(StoreBase):
    """Writes made by the auditor after (or around) training; part of :class:`fedveil.store.Store`."""

    def add_canaries(self, run_id: str, canaries: Sequence[CanaryRow]) -> None:
        """Store the canary candidates of a run (inserted ones and references).

        Parameters
        ----------
        run_id : str
            The run.
        canaries : sequence of CanaryRow
            Candidates; their secret text is stored (this is audit data).
        """
        objects = [writes.canary(run_id, row) for row in canaries]
        with self.session() as s:
            self._run(s, run_id)
            s.add_all(objects)

    def add_audit(
        self,
        run_id: str,
        kind: str,
        model: str,
        *,
        client_index: int | None = None,
        server_round: int | None = None,
        params: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
        exposures: Sequence[ExposureRow] = (),
    ) -> int:
        """Store one audit and its per-canary exposures in one transaction.

        Parameters
        ----------
        run_id : str
            The run audited.
        kind : str
            ``"exposure"``, ``"memorisation"``, ``"mia"`` or ``"epsilon"``.
        model : str
            ``"teacher"``, ``"student"``, ``"global"``, ``"finetuned"`` or ``"reference"``.
        client_index, server_round : int or None
            Which client's model / which round's model, when relevant.
        params : dict or None
            Audit settings (e.g. ``N_ref``, method, fitted skew-normal parameters).
        summary : dict or None
            Results (e.g. AUC, TPR at FPR, memorisation rates).
        exposures : sequence of ExposureRow
            Per-canary exposures (exposure audits).

        Returns
        -------
        int
            The audit id.
        """
        check_choice(kind, AUDIT_KINDS, "audit kind")
        check_choice(model, AUDIT_MODELS, "audit model")
        audit = Audit(
            run_id=run_id,
            kind=kind,
            model=model,
            client_index=client_index,
            server_round=server_round,
            params=json_safe(params or {}, "params"),
            summary=json_safe(summary or {}, "summary"),
        )
        with self.session() as s:
            self._run(s, run_id)
            s.add(audit)
            s.flush()
            s.add_all([writes.exposure(audit.id, row) for row in exposures])
        return audit.id

    def add_epsilon_bound(
        self,
        run_id: str,
        *,
        method: str,
        epsilon_lb: float,
        accountant_epsilon: float | None = None,
        client_index: int | None = None,
        details: dict[str, Any] | None = None,
        flagged: bool | None = None,
    ) -> int:
        """Store an empirical ε lower bound and compare it with the accountant's ε.

        A bound above the claimed ε (docs/METHODS.md §8, empirical ε lower bounds)
        is flagged, and the run gets the flag ``"eps_lb_exceeds_claim"`` in the
        same transaction.

        Parameters
        ----------
        run_id : str
            The run.
        method : str
            ``"clopper-pearson"`` or ``"one-run"``.
        epsilon_lb : float
            The lower bound ε_LB.
        accountant_epsilon : float or None
            ε claimed by the accountant; ``None`` when the run claims no DP
            guarantee (then nothing is flagged).
        client_index : int or None
            Client audited, if the bound concerns one client.
        details : dict or None
            Counts, α, β, thresholds tried, ...
        flagged : bool or None
            Override of the comparison ``epsilon_lb > accountant_epsilon``.

        Returns
        -------
        int
            The bound's id.
        """
        check_choice(method, BOUND_METHODS, "epsilon bound method")
        lb = check_number(epsilon_lb, "epsilon_lb")
        claim = opt_number(accountant_epsilon, "accountant_epsilon")
        if flagged is None:
            flagged = claim is not None and lb > claim
        bound = EpsilonBound(
            run_id=run_id,
            client_index=client_index,
            method=method,
            epsilon_lb=lb,
            accountant_epsilon=claim,
            flagged=bool(flagged),
            details=json_safe(details or {}, "details"),
        )
        with self.session() as s:
            run = self._run(s, run_id)
            s.add(bound)
            if flagged:
                add_flag_to(run, EPS_LB_FLAG)
            s.flush()
        return bound.id

    def add_artifact(self, run_id: str, kind: str, path: str | os.PathLike[str]) -> int:
        """Record a file produced by a run, with its SHA-256 and size computed now.

        Parameters
        ----------
        run_id : str
            The run.
        kind : str
            What it is (``"checkpoint"``, ``"report"``, ...).
        path : str or path-like
            The file (stored as an absolute path).

        Returns
        -------
        int
            The artifact id.

        Raises
        ------
        FileNotFoundError
            ``path`` is not an existing file.
        """
        artifact = writes.artifact(run_id, str(kind), path)
        with self.session() as s:
            self._run(s, run_id)
            s.add(artifact)
            s.flush()
        return artifact.id
