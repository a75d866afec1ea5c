"""The canary plan of one run (docs/METHODS.md §8): what every party can derive, and the node's secret part.

The server (the auditor) and every client agree on which canaries exist, which client holds which,
how often each exposure canary is repeated and which reference candidates they are ranked against,
without a secret on the wire: that much is a deterministic function of the run configuration (its
seed) and of the shared tokenizer's ``encode``, which fixes the equal-token-length constraint of §8.
Two canary families are planned:

* exposure canaries (Secret Sharer): for clients ``0 .. audit.canary_clients - 1`` and every
  repetition count in ``audit.canary_repetitions``, ``audit.canaries_per_setting`` canaries of every
  exposure format, plus never-inserted canaries of the same formats as a control group;
* one-run canaries (Steinke, Nasr, Jagielski 2023), pooled over every client: enough of them that a
  perfect attack could certify ``audit.power_factor × privacy.target_epsilon``, each of a rare-token
  format and included with probability 1/2 by the node's secret coin (:mod:`privacy.audit.coins`),
  never by the seed. The server's copy of the plan therefore says ``inserted=False`` for them;
  :func:`node_plan` applies the node's coins, the node reveals them after training.

Pooling is sound because each client's records enter the global model only through that client's
DP mechanism: adding or removing one canary of client ``i`` changes the global model's distribution
by at most that client's (ε_i, δ_i) (the other clients' updates are post-processing), so the pooled
one-run audit tests the largest ε_i of the federation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from fedveil.config import Config
from privacy.audit import coins
from privacy.audit.canaries import (
    Canary,
    CanaryFormat,
    equal_length_candidates,
    insert_canaries,
    plan_canaries,
    plan_one_run_canaries,
    target_token_length,
)

__all__ = [
    "EXPOSURE_FORMATS",
    "NEVER_INSERTED",
    "ONE_RUN_BETA",
    "ONE_RUN_FORMAT",
    "canary_clients",
    "canary_share",
    "insert_planned",
    "is_one_run",
    "mia_split",
    "node_plan",
    "one_run_per_client",
    "plan_formats",
    "public_plan",
    "plan_summary",
    "reference_candidates",
    "run_canary_plan",
    "training_encode",
]

Encode = Callable[[str], list[int]]

# Formats that read like the synthetic clinical / support records, so a canary is not an outlier
# the model could single out by its template alone. Digits are separated by spaces so that each
# symbol is (mostly) its own token and the secret cannot be merged into the template's tokens.
EXPOSURE_FORMATS: tuple[CanaryFormat, ...] = (CanaryFormat("my account number is {secret}", "0123456789", 6, " "),)
# The one-run canaries get a format of their own: their secrets can then never collide with an
# exposure canary or reference, and their scores are only compared with each other. Their symbols are
# Cyrillic letters, which the public corpus and the synthetic records never contain: under the
# byte-level tokenizer each is a pair of byte tokens the model has never been trained on (the
# new-token canaries of Panda et al., ICLR 2025), so one inclusion moves their likelihood far more
# than a digit's, whose prior is already learned.
ONE_RUN_FORMAT = CanaryFormat("the door code is {secret}", "абвгдежзийклмноп", 6, "")
ONE_RUN_BETA = 0.05
ONE_RUN_GUESS_FRACTION = 0.5  # k_pos = k_neg = m/4
NEVER_INSERTED = 4
_SALT_PLAN, _SALT_REFERENCES, _SALT_ONE_RUN, _SALT_INSERT = "plan", "references", "one-run", "insert"
_DESIGN_DELTA = 1e-5  # δ of the design when privacy.delta = 0: default_delta never exceeds it


def _seed(cfg: Config, *parts: object) -> int:
    """A 64-bit seed from the run seed and a purpose, identical on every machine and Python run."""
    text = "/".join(["fedveil-canaries", str(cfg.run.seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def training_encode(tokenizer: Any) -> Encode:
    """``encode`` exactly as training sees a record: BOS, then the text's tokens without specials.

    Scoring a canary with the same ids the model was trained on matters: the secret's first token is
    predicted from the template, which in training always follows BOS.
    """
    bos = int(tokenizer.bos_token_id)
    # The Rust backend gives the same ids several times faster than the Python wrapper, which
    # matters when thousands of candidates are filtered by token length.
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def encode(text: str) -> list[int]:
        if backend is not None:
            return [bos, *backend.encode(text, add_special_tokens=False).ids]
        return [bos, *tokenizer(text, add_special_tokens=False)["input_ids"]]

    return encode


def _exposure_planned(cfg: Config) -> bool:
    return cfg.audit.enabled and "exposure" in cfg.audit.kinds


def _one_run_planned(cfg: Config) -> bool:
    return cfg.audit.enabled and "epsilon" in cfg.audit.kinds


@lru_cache(maxsize=32)
def _pooled_canaries(target: float, delta: float, n_clients: int) -> int:
    from privacy.audit.epsilon import one_run_canaries_for

    if target <= 0.0:
        return 4 * n_clients
    return one_run_canaries_for(target, delta=delta, beta=ONE_RUN_BETA, guess_fraction=ONE_RUN_GUESS_FRACTION)


def one_run_per_client(cfg: Config) -> int:
    """One-run canaries planned per client: ``audit.one_run_canaries`` (or, when 0, the smallest pool
    whose audit power reaches ``audit.power_factor × privacy.target_epsilon``) split over the clients.

    Each node may use fewer (:func:`node_plan` caps its canary share); the audit's power is computed
    from the canaries actually used, so a cap shows up as lower power, never as a hidden weaker audit.
    """
    n = max(1, cfg.federation.clients)
    if cfg.audit.one_run_canaries:
        return max(1, math.ceil(cfg.audit.one_run_canaries / n))
    total = _pooled_canaries(cfg.audit.power_factor * cfg.privacy.target_epsilon, cfg.privacy.delta or _DESIGN_DELTA,
                             n)
    # A canary client's exposure copies take up to two one-run canaries each out of its share budget
    # (node_plan), so the design plans that many more, spread over all clients.
    displaced = 2 * len(canary_clients(cfg)) * sum(cfg.audit.canary_repetitions) * cfg.audit.canaries_per_setting \
        if _exposure_planned(cfg) else 0
    return max(1, math.ceil((total + displaced) / n))


def canary_clients(cfg: Config) -> list[int]:
    """Partition ids that receive canaries: the first ``audit.canary_clients`` clients."""
    return list(range(min(cfg.audit.canary_clients, cfg.federation.clients)))


def plan_formats() -> tuple[CanaryFormat, ...]:
    """Formats by ``format_index``: the exposure formats, then the one-run format."""
    return (*EXPOSURE_FORMATS, ONE_RUN_FORMAT)


def is_one_run(canary: Canary) -> bool:
    """Whether a canary belongs to the one-run audit rather than the exposure audit."""
    return canary.format_index == len(EXPOSURE_FORMATS)


def run_canary_plan(cfg: Config, encode: Encode) -> list[Canary]:
    """Every canary of a run, inserted or not: the auditor's full ground truth (docs/METHODS.md §8).

    Exposure canaries are planned only when ``audit.enabled`` and ``"exposure"`` is in
    ``audit.kinds``; one-run canaries only when ``"epsilon"`` is. Each call with the same
    configuration and tokenizer returns the same plan, on the server and on every client.

    Parameters
    ----------
    cfg
        The run configuration (``run.seed`` and the ``[audit]`` section are used).
    encode
        The shared tokenizer's encoding, e.g. :func:`training_encode`; every candidate of a format
        gets the format's target token length under it.

    Returns
    -------
    list of Canary
        Exposure canaries (ids ``f0-c{client}-r{reps}-{k}``, never-inserted ``f0-ref-{k}``), then
        one-run canaries (``onerun-f{index}-c{client}-{k}``).
    """
    clients = canary_clients(cfg)
    plan: list[Canary] = []
    if _exposure_planned(cfg) and clients and cfg.audit.canaries_per_setting > 0:
        plan += plan_canaries(EXPOSURE_FORMATS, clients, cfg.audit.canary_repetitions, cfg.audit.canaries_per_setting,
                              NEVER_INSERTED, rng=np.random.default_rng(_seed(cfg, _SALT_PLAN)), encode=encode)
    if _one_run_planned(cfg):
        index = len(EXPOSURE_FORMATS)
        per_client = one_run_per_client(cfg)
        for client in range(cfg.federation.clients):
            rng = np.random.default_rng(_seed(cfg, _SALT_ONE_RUN, client))
            # The seeded coins of plan_one_run_canaries are discarded: inclusion is the node's secret.
            plan += [dataclasses.replace(c, inserted=False, repetitions=0) for c in plan_one_run_canaries(
                ONE_RUN_FORMAT, per_client, client, rng, format_index=index, encode=encode)]
    return plan


def _key(cfg: Config, partition_id: int) -> bytes:
    return coins.coin_key(cfg.run.run_id, partition_id)


def _share_budget(cfg: Config, n_records: int) -> float:
    """Largest expected number of canary copies ``E`` with ``E / (n + E) <= audit.max_canary_share``, for
    the ``n`` records a node trains on out of its ``n_records`` (the MIA holdout is taken out)."""
    share = cfg.audit.max_canary_share
    trained = n_records * (1.0 - cfg.audit.mia_holdout) if _split_active(cfg) else float(n_records)
    return share * trained / (1.0 - share)


def _withdrawn(cfg: Config, partition_id: int, n_records: int, plan: Sequence[Canary]) -> tuple[set[str], int]:
    """Exposure canaries a node withdraws to respect the share cap (most copies first), and the copies left."""
    budget = _share_budget(cfg, n_records)
    mine = sorted((c for c in plan if not is_one_run(c) and c.inserted and c.client_index == partition_id),
                  key=lambda c: (-c.repetitions, c.canary_id))
    copies = sum(c.repetitions for c in mine)
    withdrawn: set[str] = set()
    for c in mine:
        if copies <= budget:
            break
        withdrawn.add(c.canary_id)
        copies -= c.repetitions
    return withdrawn, copies


def public_plan(cfg: Config, plan: Sequence[Canary], n_records: Mapping[int, int]) -> list[Canary]:
    """The plan as everyone can know it once each client's record count is known (it is public): exposure
    canaries withdrawn by the share cap become never-inserted controls (``repetitions=0``)."""
    withdrawn: set[str] = set()
    for client, n in n_records.items():
        withdrawn |= _withdrawn(cfg, client, n, plan)[0]
    return [dataclasses.replace(c, inserted=False, repetitions=0) if c.canary_id in withdrawn else c for c in plan]


def node_plan(cfg: Config, partition_id: int, n_records: int, plan: Sequence[Canary]) -> list[Canary]:
    """The plan as node ``partition_id`` (holding ``n_records`` records) knows it, under the share cap.

    The expected canary share ``(exposure copies + m/2) / (n + exposure copies + m/2)`` of its training
    set stays at most ``audit.max_canary_share``: the node's exposure canaries with the most copies are
    withdrawn first (they stay in the audit as never-inserted controls, :func:`public_plan`), then it
    uses only as many of its one-run canaries as fit, each included by its secret coin. Other clients'
    one-run canaries are dropped (unknown here). Only the coins are secret: which canaries are used
    follows from the configuration and the record count.
    """
    withdrawn, copies = _withdrawn(cfg, partition_id, n_records, plan)
    exposure = [dataclasses.replace(c, inserted=False, repetitions=0) if c.canary_id in withdrawn else c
                for c in plan if not is_one_run(c)]
    own = [c for c in plan if is_one_run(c) and c.client_index == partition_id]
    used = own[: max(0, min(len(own), math.floor(2.0 * (_share_budget(cfg, n_records) - copies))))]
    key = _key(cfg, partition_id) if used else b""
    resolved = []
    for c in used:
        flag = coins.included(key, c.canary_id)
        resolved.append(dataclasses.replace(c, inserted=flag, repetitions=int(flag)))
    return exposure + resolved


def _split_active(cfg: Config) -> bool:
    return cfg.audit.enabled and bool({"mia", "epsilon"} & set(cfg.audit.kinds)) and cfg.audit.mia_holdout > 0.0


def mia_split(cfg: Config, partition_id: int, texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Members (trained on) and non-members (held out) of a node's records: a secret random split.

    Record ``i`` is held out when the node's coin for it falls below ``audit.mia_holdout``; nothing
    but the node's key decides, so a non-IID partition cannot make members look different from
    non-members. No split (all members) when the MIA is not audited.
    """
    if not _split_active(cfg):
        return list(texts), []
    key = _key(cfg, partition_id)
    held = [coins.uniform(key, f"record-{i}") < cfg.audit.mia_holdout for i in range(len(texts))]
    return ([t for t, h in zip(texts, held, strict=True) if not h],
            [t for t, h in zip(texts, held, strict=True) if h])


def reference_candidates(cfg: Config, encode: Encode, plan: Sequence[Canary]) -> dict[int, list[str]]:
    """``audit.n_references`` never-inserted reference texts per exposure format of the plan.

    References share the format's target token length and exclude every planned secret of that
    format, so no reference duplicates a canary. One-run canaries need no references (their
    scores are ranked against each other).
    """
    out: dict[int, list[str]] = {}
    used = sorted({c.format_index for c in plan if not is_one_run(c)})
    for index in used:
        fmt = EXPOSURE_FORMATS[index]
        secrets = [c.secret for c in plan if c.format_index == index]
        rng = np.random.default_rng(_seed(cfg, _SALT_REFERENCES, index))
        out[index] = equal_length_candidates(fmt, cfg.audit.n_references, encode, rng, exclude=secrets,
                                             target_length=target_token_length(fmt, encode))
    return out


def insert_planned(cfg: Config, partition_id: int, texts: list[str], plan: Sequence[Canary]) -> list[str]:
    """What node ``partition_id`` trains on: its members (:func:`mia_split`) with its inserted canaries
    (:func:`node_plan`: exposure canaries and the one-run canaries its secret coins include), each copy
    at a seeded random position."""
    members, _ = mia_split(cfg, partition_id, texts)
    rng = np.random.default_rng(_seed(cfg, _SALT_INSERT, partition_id))
    return insert_canaries(members, node_plan(cfg, partition_id, len(texts), plan), partition_id, rng)


def plan_summary(plan: Sequence[Canary]) -> Mapping[str, int]:
    """Counts of a plan for logs (no secrets): inserted, never inserted, one-run, copies."""
    return {
        "inserted": sum(1 for c in plan if c.inserted and not is_one_run(c)),
        "never_inserted": sum(1 for c in plan if not c.inserted and not is_one_run(c)),
        "one_run": sum(1 for c in plan if is_one_run(c)),
        "copies": sum(c.repetitions for c in plan if c.inserted),
    }


def canary_share(plan: Sequence[Canary], partition_id: int, n_records: int) -> float:
    """Share of canary copies in a node's training set under its resolved plan (shown with the audit)."""
    copies = sum(c.repetitions for c in plan if c.inserted and c.client_index == partition_id)
    return copies / (n_records + copies) if n_records + copies else 0.0
