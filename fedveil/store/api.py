"""The fedveil SQL store: one :class:`Store` object over any SQLAlchemy URL.

Opening a store migrates its database to the newest schema. Every public
method is one transaction: it either writes everything or nothing.

JSON shape of :meth:`Store.get_run` (all values JSON-serialisable; timestamps
are ISO-8601 UTC strings such as ``"2025-01-31T12:00:00.123456+00:00"``;
non-finite floats are ``null``)::

    {
      "run": {"id", "name", "status", "error", "method", "task", "he_enabled",
              "num_clients", "num_rounds", "seed", "config": {...}, "privacy_statement",
              "run_dir", "created_at", "started_at", "finished_at", "wall_seconds",
              "peak_rss_mb", "last_complete_round", "flags": [str, ...]},
      "clients": [{"client_index", "node_id", "num_examples", "teacher_provenance",
                   "teacher_epsilon"}],                       # by client_index
      "rounds": [{"server_round", "status", "started_at", "finished_at", "num_sampled",
                  "num_replied", "num_failed", "num_rejected", "wall_seconds"}],  # by round
      "metrics": [{"round", "client", "name", "value"}],       # insertion order;
                                                               # client null = global
      "privacy_ledger": [{"client_index", "server_round", "epsilon", "delta",
                          "noise_multiplier", "sample_rate", "steps", "accountant",
                          "max_grad_norm", "grad_sample_mode"}],  # by round, client
      "he_records": [{"server_round", "client_index", "profile", "bytes_sent",
                      "encrypt_seconds", "aggregate_seconds", "decrypt_seconds",
                      "max_abs_error"}],                       # client null = server
      "events": [{"server_round", "client_index", "node_id", "kind", "reason"}],
      "canaries": [{"canary_id", "format_index", "template", "secret", "client_index",
                    "repetitions", "inserted", "one_run"}],   # secrets included:
                                                               # this is audit data
      "audits": [{"id", "kind", "model", "client_index", "server_round", "created_at",
                  "params": {...}, "summary": {...},
                  "exposures": [{"canary_id", "repetitions", "log_perplexity_bits",
                                 "exposure_rank", "exposure_extrapolated",
                                 "extrapolated_is_bound", "n_ref"}]}],
      "epsilon_bounds": [{"id", "client_index", "method", "epsilon_lb",
                          "accountant_epsilon", "flagged", "details": {...}}],
      "artifacts": [{"id", "kind", "path", "sha256", "bytes", "created_at"}]
    }

:meth:`Store.list_runs` returns, newest first, dicts with the ``run`` columns
except ``config``, ``privacy_statement``, ``error`` and ``run_dir``, plus
``final_perplexity`` / ``final_accuracy`` (the global metric of that name at
the highest round, or ``null``), ``max_epsilon`` (largest ε in the ledger),
``worst_exposure`` (largest rank exposure over the released models' audits) and
``eps_lb_exceeds_claim`` (bool: an empirical ε lower bound exceeded the
accountant's ε).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from fedveil.store import reads, writes
from fedveil.store.auditing import AuditingStore, add_flag_to
from fedveil.store.convert import check_choice, check_count, json_safe, opt_number
from fedveil.store.engine import mask_url
from fedveil.store.errors import StoreError
from fedveil.store.models import TEACHER_PROVENANCES, Client, Run, utcnow
from fedveil.store.rows import EventRow, HERow, LedgerRow, MetricRow

logger = logging.getLogger("fedveil.store")


class Store(AuditingStore):
    """Persistent record of runs, rounds, privacy ledger, HE costs and audits.

    Parameters
    ----------
    url : str
        SQLAlchemy URL (``sqlite:////abs/path.db``, ``postgresql+psycopg://...``)
        or a plain path to a SQLite file. See :func:`default_db_url`.
    echo : bool
        Log every SQL statement (debugging).
    busy_timeout_ms : int
        SQLite only: how long to wait for another process's write lock.

    Raises
    ------
    StoreError
        The database cannot be opened or migrated; the one-line message names
        the URL with any password masked.

    Examples
    --------
    >>> with Store("sqlite:////tmp/fedveil.db") as store:  # doctest: +SKIP
    ...     run_id = store.create_run({"lr": 1e-3}, name="demo", method="fedavg", task="lm",
    ...                               he_enabled=False, num_clients=2, num_rounds=3, seed=0)
    """

    # ---- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        config: dict[str, Any],
        *,
        run_id: str | None = None,
        name: str,
        method: str,
        task: str,
        he_enabled: bool,
        num_clients: int,
        num_rounds: int,
        seed: int,
        privacy_statement: str = "",
        run_dir: str | os.PathLike[str] | None = None,
    ) -> str:
        """Record a new run in status ``"pending"``.

        Parameters
        ----------
        config : dict
            The full nested run configuration (stored as JSON; see :func:`json_safe`).
        run_id : str or None
            Id to use (at most 36 characters); a new uuid4 hex when ``None``.
        name, method, task : str
            Display name, federated method and task.
        he_enabled : bool
            Whether updates are aggregated under homomorphic encryption.
        num_clients, num_rounds, seed : int
            Planned federation size, number of rounds and random seed.
        privacy_statement : str
            The run's privacy statement (docs/METHODS.md §2); can be set later.
        run_dir : str, path-like or None
            Directory holding the run's files.

        Returns
        -------
        str
            The run id.

        Raises
        ------
        ValueError
            Bad argument (negative count, bad id).
        TypeError
            ``config`` is not JSON-serialisable (the message says where).
        StoreError
            The id is taken, or the write failed.
        """
        rid = uuid.uuid4().hex if run_id is None else str(run_id)
        if not rid or len(rid) > 36:
            raise ValueError(f"run_id must be 1 to 36 characters; got {rid!r}")
        run = Run(
            id=rid,
            name=str(name),
            status="pending",
            method=str(method),
            task=str(task),
            he_enabled=bool(he_enabled),
            num_clients=check_count(num_clients, "num_clients"),
            num_rounds=check_count(num_rounds, "num_rounds"),
            seed=int(seed),
            config=json_safe(config, "config"),
            privacy_statement=str(privacy_statement),
            run_dir=None if run_dir is None else os.fspath(run_dir),
            created_at=utcnow(),
            last_complete_round=0,
            flags=[],
        )
        with self.session() as s:
            if s.get(Run, rid) is not None:
                raise StoreError(f"run id {rid!r} already exists in {mask_url(self.url)}")
            s.add(run)
        return rid

    def mark_running(self, run_id: str) -> None:
        """Set a run to ``"running"`` (also used on resume: clears a previous error).

        ``started_at`` is set the first time only.
        """
        with self.session() as s:
            run = self._run(s, run_id)
            run.status = "running"
            run.error = None
            run.finished_at = None
            if run.started_at is None:
                run.started_at = utcnow()

    def complete_run(self, run_id: str, *, wall_seconds: float | None = None, peak_rss_mb: float | None = None) -> None:
        """Set a run to ``"completed"`` with its finish time; resource figures given are stored."""
        with self.session() as s:
            run = self._run(s, run_id)
            run.status = "completed"
            run.finished_at = utcnow()
            if wall_seconds is not None:
                run.wall_seconds = opt_number(wall_seconds, "wall_seconds")
            if peak_rss_mb is not None:
                run.peak_rss_mb = opt_number(peak_rss_mb, "peak_rss_mb")

    def set_resources(self, run_id: str, *, wall_seconds: float, peak_rss_mb: float) -> None:
        """Record the launcher's end-to-end wall time and peak memory increase for a run."""
        with self.session() as s:
            run = self._run(s, run_id)
            run.wall_seconds = opt_number(wall_seconds, "wall_seconds")
            run.peak_rss_mb = opt_number(peak_rss_mb, "peak_rss_mb")

    def fail_run(
        self, run_id: str, error: str, *, wall_seconds: float | None = None, peak_rss_mb: float | None = None
    ) -> bool:
        """Mark a run ``"failed"`` with an error message. Never raises.

        Meant for exception handlers: if the database itself is broken (locked,
        dropped, unreachable) or the run is unknown, the problem is logged and
        ``False`` is returned so the original exception stays the one reported.

        Returns
        -------
        bool
            Whether the run was marked failed.
        """
        try:
            with self.session() as s:
                run = self._run(s, run_id)
                run.status = "failed"
                run.error = str(error)
                run.finished_at = utcnow()
                if wall_seconds is not None:
                    run.wall_seconds = float(wall_seconds)
                if peak_rss_mb is not None:
                    run.peak_rss_mb = float(peak_rss_mb)
            return True
        except Exception as exc:  # noqa: BLE001 - by contract this never raises
            logger.error("could not mark run %r as failed in %s: %s", run_id, mask_url(self.url), exc)
            return False

    def set_privacy_statement(self, run_id: str, text: str) -> None:
        """Replace a run's privacy statement."""
        with self.session() as s:
            self._run(s, run_id).privacy_statement = str(text)

    def add_flag(self, run_id: str, flag: str) -> None:
        """Add a flag (e.g. ``"eps_lb_exceeds_claim"``) to a run; adding it twice is a no-op."""
        with self.session() as s:
            add_flag_to(self._run(s, run_id), flag)

    def delete_run(self, run_id: str) -> None:
        """Delete a run and, by cascade, every row that belongs to it."""
        with self.session() as s:
            s.delete(self._run(s, run_id))

    # ---- training records -------------------------------------------------------------------

    def register_client(
        self,
        run_id: str,
        client_index: int,
        *,
        node_id: str | int | None = None,
        num_examples: int | None = None,
        teacher_provenance: str | None = None,
        teacher_epsilon: float | None = None,
    ) -> None:
        """Insert or update a client of a run.

        Parameters
        ----------
        run_id : str
            The run.
        client_index : int
            Client's index in the federation (0-based).
        node_id : str, int or None
            Flower node id (stored as text).
        num_examples : int or None
            Number of private records the client holds (before any audit canaries are inserted);
            None keeps the stored count of an existing client (required for a new one).
        teacher_provenance : str or None
            ``"public"``, ``"private-non-dp"``, ``"dp"`` or ``"none"``.
        teacher_epsilon : float or None
            ε of a DP-trained teacher.
        """
        check_choice(teacher_provenance, TEACHER_PROVENANCES, "teacher_provenance", optional=True)
        index = check_count(client_index, "client_index")
        with self.session() as s:
            self._run(s, run_id)
            client = s.scalar(
                sa.select(Client).where(Client.run_id == run_id, Client.client_index == index)
            )
            if client is None:
                if num_examples is None:
                    raise ValueError(f"client {index} of run {run_id} is new: num_examples is required")
                client = Client(run_id=run_id, client_index=index)
                s.add(client)
            client.node_id = None if node_id is None else str(node_id)
            if num_examples is not None:
                client.num_examples = check_count(num_examples, "num_examples")
            client.teacher_provenance = teacher_provenance
            client.teacher_epsilon = opt_number(teacher_epsilon, "teacher_epsilon")

    def record_round(
        self,
        run_id: str,
        server_round: int,
        *,
        status: str,
        started_at: dt.datetime,
        finished_at: dt.datetime,
        num_sampled: int,
        num_replied: int,
        num_failed: int = 0,
        num_rejected: int = 0,
        wall_seconds: float | None = None,
        metrics: Sequence[MetricRow] = (),
        ledger: Sequence[LedgerRow] = (),
        he: Sequence[HERow] = (),
        events: Sequence[EventRow] = (),
    ) -> None:
        """Record a round with its metrics, ledger, HE and event rows in ONE transaction.

        If any row is invalid nothing of the call is written. A completed round
        raises ``runs.last_complete_round`` to ``server_round`` (resume point).
        Rows whose ``server_round`` is ``None`` are given this round. A round
        previously stored as ``"failed"`` is replaced (retry after resume).

        Parameters
        ----------
        run_id : str
            The run.
        server_round : int
            Round number (Flower counts from 1).
        status : str
            ``"completed"`` or ``"failed"``.
        started_at, finished_at : datetime
            Round start and end (naive values are taken as UTC).
        num_sampled, num_replied, num_failed, num_rejected : int
            Clients sampled, that replied, that failed, whose reply was rejected.
        wall_seconds : float or None
            Round duration; ``finished_at - started_at`` when ``None``.
        metrics, ledger, he, events : sequences of row objects
            Everything reported with the round.

        Raises
        ------
        ValueError
            Invalid argument or row (nothing written).
        StoreError
            Database error, e.g. a duplicate ledger row (nothing written), or the
            round is already recorded as completed.
        """
        counts = {
            "num_sampled": num_sampled,
            "num_replied": num_replied,
            "num_failed": num_failed,
            "num_rejected": num_rejected,
        }
        with self.session() as s:
            writes.insert_round(
                s,
                self._run(s, run_id),
                server_round,
                status=status,
                started_at=started_at,
                finished_at=finished_at,
                counts=counts,
                wall_seconds=wall_seconds,
                metrics=metrics,
                ledger_rows=ledger,
                he=he,
                events=events,
            )

    def add_metrics(self, run_id: str, rows: Sequence[MetricRow]) -> None:
        """Store metric rows outside :meth:`record_round` (e.g. a final evaluation)."""
        objects = [writes.metric(run_id, row) for row in rows]
        with self.session() as s:
            self._run(s, run_id)
            s.add_all(objects)

    def add_ledger(self, run_id: str, rows: Sequence[LedgerRow]) -> None:
        """Store ledger rows outside :meth:`record_round`; each needs its ``server_round``."""
        objects = [writes.ledger(run_id, row) for row in rows]
        with self.session() as s:
            self._run(s, run_id)
            s.add_all(objects)

    def add_he_records(self, run_id: str, rows: Sequence[HERow]) -> None:
        """Store HE cost rows outside :meth:`record_round`; each needs its ``server_round``."""
        objects = [writes.he_record(run_id, row) for row in rows]
        with self.session() as s:
            self._run(s, run_id)
            s.add_all(objects)

    def add_events(self, run_id: str, rows: Sequence[EventRow]) -> None:
        """Store client events (dropped, rejected, failed, refused-budget)."""
        objects = [writes.event(run_id, row) for row in rows]
        with self.session() as s:
            self._run(s, run_id)
            s.add_all(objects)

    # ---- reads ------------------------------------------------------------------------------

    def list_runs(self) -> list[dict[str, Any]]:
        """Summaries of every run, newest first (shape in the module docstring).

        Returns
        -------
        list of dict
            JSON-serialisable summaries with final utility, max ε, worst exposure
            and the ε-lower-bound flag.
        """
        with self.session(readonly=True) as s:
            return reads.run_summaries(s)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Everything stored about one run, in the JSON shape of the module docstring.

        Raises
        ------
        RunNotFound
            Unknown run id.
        """
        with self.session(readonly=True) as s:
            return reads.run_detail(s, self._run(s, run_id))

    def latest_ledger(self, run_id: str) -> dict[int, dict[str, Any]]:
        """Per client index, its ledger row of the highest round (for resume and ε checks).

        Raises
        ------
        RunNotFound
            Unknown run id.
        """
        with self.session(readonly=True) as s:
            self._run(s, run_id)
            return reads.latest_ledger(s, run_id)

    def run_ids(self) -> list[str]:
        """Ids of every run, oldest first."""
        with self.session(readonly=True) as s:
            return list(s.scalars(sa.select(Run.id).order_by(Run.created_at, Run.id)))
