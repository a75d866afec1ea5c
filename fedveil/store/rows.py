"""Plain, immutable row objects that callers hand to :class:`fedveil.store.Store`.

They decouple the training / audit code from the ORM: a caller builds rows
without importing SQLAlchemy, and the store validates and inserts them.
Fields named ``server_round`` may be left as ``None`` when the rows are passed
to :meth:`Store.record_round`, which fills in the round being recorded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricRow:
    """One scalar metric.

    Parameters
    ----------
    name : str
        Metric name, e.g. ``"perplexity"``, ``"accuracy"``, ``"train_loss"``.
    value : float
        The value (non-finite values are stored but read back as ``None``).
    server_round : int or None
        Round the value belongs to; ``None`` = not tied to a round.
    client_index : int or None
        Client that produced it; ``None`` = a global (federation-level) value.
    """

    name: str
    value: float
    server_round: int | None = None
    client_index: int | None = None


@dataclass(frozen=True)
class LedgerRow:
    """One privacy-accountant snapshot of one client after one round.

    Parameters
    ----------
    client_index : int
        Client whose accountant this is.
    epsilon : float
        Cumulative ε spent so far (for ``delta``).
    delta : float
        The δ of the guarantee.
    noise_multiplier : float
        σ used by DP-SGD.
    sample_rate : float
        Poisson sampling rate q.
    steps : int
        Cumulative number of DP-SGD steps since the start of the run.
    accountant : str
        Accountant name, ``"prv"`` or ``"rdp"``.
    max_grad_norm : float
        Clipping norm C.
    grad_sample_mode : str or None
        Opacus mode that actually ran (``"ghost"``, ``"hooks"``, ...).
    server_round : int or None
        Round number; filled in by ``record_round`` when ``None``.
    """

    client_index: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    max_grad_norm: float
    grad_sample_mode: str | None = None
    server_round: int | None = None


@dataclass(frozen=True)
class HERow:
    """Cost and accuracy of homomorphic encryption in one round.

    Parameters
    ----------
    profile : str
        CKKS parameter profile name.
    bytes_sent : int
        Ciphertext bytes sent (by the client, or by the server for the aggregate).
    client_index : int or None
        ``None`` = the server-side aggregate record.
    encrypt_seconds, aggregate_seconds, decrypt_seconds : float or None
        Time spent in each stage, where measured.
    max_abs_error : float or None
        max |HE result − plaintext result| on a verification round.
    server_round : int or None
        Round number; filled in by ``record_round`` when ``None``.
    """

    profile: str
    bytes_sent: int
    client_index: int | None = None
    encrypt_seconds: float | None = None
    aggregate_seconds: float | None = None
    decrypt_seconds: float | None = None
    max_abs_error: float | None = None
    server_round: int | None = None


@dataclass(frozen=True)
class EventRow:
    """Something that happened to a client: dropped, rejected, failed or refused for budget.

    Parameters
    ----------
    kind : str
        One of ``"dropped"``, ``"rejected"``, ``"failed"``, ``"refused-budget"``.
    reason : str
        Human-readable reason (logged text).
    client_index : int or None
        Client concerned, when known.
    node_id : str or None
        Flower node id, when known.
    server_round : int or None
        Round number; filled in by ``record_round`` when ``None``.
    """

    kind: str
    reason: str
    client_index: int | None = None
    node_id: str | None = None
    server_round: int | None = None


@dataclass(frozen=True)
class CanaryRow:
    """One canary candidate (docs/METHODS.md §8, Secret Sharer).

    Parameters
    ----------
    canary_id : str
        Stable id of the canary within the run.
    format_index : int
        Index of the format (template) it was drawn from.
    template : str
        The format text, e.g. ``"my account number is {d}{d}{d}{d}{d}{d}"``.
    secret : str
        The filled-in secret (audit data: the store holds canary text).
    repetitions : int
        How many times it was inserted (0 for references).
    inserted : bool
        Whether it was inserted into training data at all.
    client_index : int or None
        Client whose records received it.
    one_run : bool
        Whether it belongs to a one-run audit (included with probability 1/2).
    """

    canary_id: str
    format_index: int
    template: str
    secret: str
    repetitions: int
    inserted: bool
    client_index: int | None = None
    one_run: bool = False


@dataclass(frozen=True)
class ExposureRow:
    """Exposure of one canary measured by one audit (docs/METHODS.md §8, Exposure).

    Parameters
    ----------
    canary_id : str
        Canary measured.
    repetitions : int
        Insertions of that canary (|R| per canary).
    log_perplexity_bits : float
        Σ −log2 p(token | prefix) over the secret tokens.
    exposure_rank : float
        Rank-form exposure, log2(N_ref) − log2(rank).
    n_ref : int
        Number of reference candidates.
    exposure_extrapolated : float or None
        Skew-normal extrapolated exposure, −log2 CDF(perplexity).
    extrapolated_is_bound : bool
        True when the CDF underflowed and the value is a lower bound ("> bound").
    """

    canary_id: str
    repetitions: int
    log_perplexity_bits: float
    exposure_rank: float
    n_ref: int
    exposure_extrapolated: float | None = None
    extrapolated_is_bound: bool = False
