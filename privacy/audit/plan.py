"""The canary plan of one run, derived from its configuration alone (docs/METHODS.md §8).

The server (the auditor) and every client must agree on which canaries exist, which client holds
which, how often each is repeated and which reference candidates they are ranked against — without
the server ever sending a secret over the wire. Everything here is therefore a deterministic function
of the run configuration (its seed) and of the shared tokenizer's ``encode``, which fixes the
equal-token-length constraint of §8. Two canary families are planned:

* exposure canaries (Secret Sharer): for clients ``0 .. audit.canary_clients - 1`` and every
  repetition count in ``audit.canary_repetitions``, ``audit.canaries_per_setting`` canaries of every
  exposure format, plus never-inserted canaries of the same formats as a control group;
* one-run canaries (Steinke, Nasr, Jagielski 2023): ``ONE_RUN_CANARIES`` per canary client of their
  own format, each inserted once with probability 1/2, for the one-run ε lower bound.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedveil.config import Config
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
    "ONE_RUN_CANARIES",
    "ONE_RUN_FORMAT",
    "canary_clients",
    "insert_planned",
    "is_one_run",
    "plan_formats",
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
# exposure canary or reference, and their scores are only compared with each other.
ONE_RUN_FORMAT = CanaryFormat("the door code is {secret}", "0123456789", 6, " ")
ONE_RUN_CANARIES = 32
NEVER_INSERTED = 4
_SALT_PLAN, _SALT_REFERENCES, _SALT_ONE_RUN, _SALT_INSERT = "plan", "references", "one-run", "insert"


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
        for client in clients:
            rng = np.random.default_rng(_seed(cfg, _SALT_ONE_RUN, client))
            plan += plan_one_run_canaries(ONE_RUN_FORMAT, ONE_RUN_CANARIES, client, rng, format_index=index,
                                          encode=encode)
    return plan


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
    """``texts`` with this client's inserted canaries added, each copy at a seeded random position."""
    rng = np.random.default_rng(_seed(cfg, _SALT_INSERT, partition_id))
    return insert_canaries(texts, plan, partition_id, rng)


def plan_summary(plan: Sequence[Canary]) -> Mapping[str, int]:
    """Counts of a plan for logs (no secrets): inserted, never inserted, one-run, copies."""
    return {
        "inserted": sum(1 for c in plan if c.inserted and not is_one_run(c)),
        "never_inserted": sum(1 for c in plan if not c.inserted and not is_one_run(c)),
        "one_run": sum(1 for c in plan if is_one_run(c)),
        "copies": sum(c.repetitions for c in plan if c.inserted),
    }
