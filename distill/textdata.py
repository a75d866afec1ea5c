"""What a client holds for the language-model task: its private records, tokenised.

In simulation the records are generated deterministically from the run seed and the
client's partition id (the same corpus is generated everywhere, then partitioned), so no
data file has to be shipped. In deployment they come from ``data-path`` in node config.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from distill.data import generate_private_records, generate_public_corpus
from distill.loaders import load_text_records
from distill.partition import partition
from fedveil.config import Config
from privacy.audit.canaries import Canary
from privacy.audit.plan import insert_planned, run_canary_plan, training_encode
from privacy.pii import DetectorSource, PIIDetector, PrivacySource

PUBLIC_SEED_OFFSET = 7919  # public corpus seed differs from every private seed
HELDOUT_SEED_OFFSET = 104729


@dataclass(frozen=True)
class TokenisedRecords:
    """Right-padded token ids with masks and per-token privacy likelihoods (docs/METHODS.md §5)."""

    input_ids: torch.Tensor        # (N, T) long, right-padded with pad id
    attention_mask: torch.Tensor   # (N, T)
    target_mask: torch.Tensor      # (N, T) 1 on continuation positions (after the prompt)
    privacy: torch.Tensor          # (N, T) π_n in [0, 1]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def record_prompt_length(n_tokens: int, prompt_length: int) -> int:
    """Tokens of a record (BOS … EOS, ``n_tokens`` long) that form its prompt x (docs/METHODS.md §4).

    ``prompt_length``, but never more than half the record: a short record, such as an audit canary
    (≈ 14 tokens), keeps a continuation y to learn, otherwise no method would ever train on its tokens
    and the exposure audit would measure nothing.
    """
    return max(1, min(prompt_length, n_tokens // 2))


def tokenise(tokenizer: object, texts: list[str], *, max_length: int, prompt_length: int,
             with_privacy: bool = True, source: PrivacySource | None = None) -> TokenisedRecords:
    """Encode with BOS/EOS, right-pad, mark continuation targets and private tokens.

    π comes from ``source`` (default: the PII detector) when ``with_privacy``, else it is 0.
    """
    tok = tokenizer
    pad, bos, eos = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id  # type: ignore[attr-defined]
    if with_privacy and source is None:
        source = DetectorSource(PIIDetector())
    elif not with_privacy:
        source = None
    n = len(texts)
    ids = torch.full((n, max_length), pad, dtype=torch.long)
    attn = torch.zeros((n, max_length), dtype=torch.long)
    target = torch.zeros((n, max_length))
    priv = torch.zeros((n, max_length))
    for i, text in enumerate(texts):
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)  # type: ignore[operator]
        body, offsets = enc["input_ids"][: max_length - 2], enc["offset_mapping"][: max_length - 2]
        row = [bos, *body, eos]
        ids[i, : len(row)] = torch.tensor(row)
        attn[i, : len(row)] = 1
        target[i, record_prompt_length(len(row), prompt_length): len(row)] = 1.0
        if source is not None and body:
            pi = source.token_privacy(text, offsets)
            priv[i, 1: 1 + len(body)] = torch.from_numpy(np.asarray(pi, dtype=np.float32))
    return TokenisedRecords(ids, attn, target, priv, tuple(texts))


@lru_cache(maxsize=4)
def public_corpus(seed: int, n: int) -> tuple[str, ...]:
    """The PII-free public corpus (tokenizer training, public teacher)."""
    return tuple(generate_public_corpus(n, seed + PUBLIC_SEED_OFFSET))


@lru_cache(maxsize=4)
def _synthetic_corpus(seed: int, n: int, kind: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    records = generate_private_records(n, seed, kind=kind)  # type: ignore[arg-type]
    return tuple(r.text for r in records), tuple(r.topic for r in records)


def client_texts(cfg: Config, partition_id: int) -> list[str]:
    """The private records of one simulated client (deterministic in the seed)."""
    n_clients = cfg.federation.clients
    if not 0 <= partition_id < n_clients:
        raise ValueError(f"partition-id {partition_id} is outside [0, {n_clients})")
    if cfg.data.task == "text-file":
        texts = load_text_records(cfg.data.path, field=cfg.data.field)
        topics = [0] * len(texts)
    else:
        texts_t, topics_t = _synthetic_corpus(cfg.run.seed, cfg.data.records_per_client * n_clients, cfg.data.kind)
        texts, topics = list(texts_t), list(topics_t)
    kw: dict[str, float | int] = {}
    kind = cfg.data.partition
    if kind == "dirichlet":
        kw["alpha"] = cfg.data.alpha
    elif kind == "classes":
        kw["classes_per_client"] = cfg.data.classes_per_client
    parts = partition(kind, np.asarray(topics), n_clients, np.random.default_rng(cfg.run.seed), **kw)
    return [texts[i] for i in parts[partition_id]]


_PLANS: dict[tuple[Config, int], tuple[object, list[Canary]]] = {}


def canary_plan(cfg: Config, tokenizer: object) -> list[Canary]:
    """The run's canary plan (privacy.audit.plan), cached per configuration and tokenizer object."""
    key = (cfg, id(tokenizer))
    cached = _PLANS.get(key)
    # The tokenizer is kept in the value so that its id cannot be reused while the entry lives.
    if cached is None or cached[0] is not tokenizer:
        if len(_PLANS) >= 8:
            _PLANS.clear()
        cached = (tokenizer, run_canary_plan(cfg, training_encode(tokenizer)))
        _PLANS[key] = cached
    return cached[1]


def with_canaries(cfg: Config, partition_id: int, texts: list[str], tokenizer: object) -> list[str]:
    """The records a client trains on: its own ``texts`` plus its planned audit canaries.

    Canaries (docs/METHODS.md §8) are planned from the run seed, so the server knows the ground truth
    without receiving anything; a client that holds none gets ``texts`` unchanged.
    """
    return insert_planned(cfg, partition_id, texts, canary_plan(cfg, tokenizer))


def heldout_texts(cfg: Config) -> list[str]:
    """Held-out records from the private distribution, never trained on (for perplexity)."""
    if cfg.data.task == "text-file" and cfg.data.heldout_path:
        return load_text_records(cfg.data.heldout_path, field=cfg.data.field)[: cfg.data.heldout_records]
    texts, _ = _synthetic_corpus(cfg.run.seed + HELDOUT_SEED_OFFSET, cfg.data.heldout_records, cfg.data.kind)
    return list(texts)


def heldout_shard(cfg: Config, partition_id: int) -> list[str]:
    """Each client evaluates a disjoint shard; the server sums NLL and tokens exactly."""
    texts = heldout_texts(cfg)
    return texts[partition_id:: cfg.federation.clients]
