"""Canary planning, insertion and equal-length reference candidates (docs/METHODS.md §8, Secret Sharer).

A canary is a format such as ``"my account number is {secret}"`` filled with random symbols. Some
canaries are inserted into one client's records ``r`` times, the rest are never inserted; the plan
returned here is the full ground truth the auditor keeps. Exposure compares a canary's log-perplexity
with that of reference candidates of the same format, which is only meaningful when every candidate of
a format has the same number of tokens (a longer candidate collects more per-token loss), so every
sampler here can be given the tokenizer's ``encode`` and then only keeps secrets of the format's
target token length.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Canary",
    "CanaryFormat",
    "candidate_token_ids",
    "equal_length_candidates",
    "insert_canaries",
    "log2_space_size",
    "plan_canaries",
    "plan_one_run_canaries",
    "sample_secrets",
    "target_token_length",
]

Encode = Callable[[str], list[int]]
SECRET_FIELD = "{secret}"
# Rejection sampling gives up after this many draws per requested secret: a format whose target
# length is that rare is a configuration error, better reported than looped on.
_MAX_DRAWS_PER_SECRET = 200
# Below this space size, and when most of the space is wanted, enumerating beats rejection sampling.
_ENUMERATE_LIMIT = 1_000_000
_PROBE_SECRETS = 512


@dataclass(frozen=True)
class CanaryFormat:
    """A canary format: ``template`` with one ``{secret}`` field.

    The secret is ``length`` symbols drawn uniformly from ``alphabet`` (one symbol per character),
    joined by ``separator``. The randomness space therefore has ``|R| = len(alphabet) ** length``
    elements.
    """

    template: str
    alphabet: str = "0123456789"
    length: int = 6
    separator: str = " "

    def __post_init__(self) -> None:
        if self.template.count(SECRET_FIELD) != 1:
            raise ValueError(
                f"CanaryFormat.template must contain exactly one {SECRET_FIELD!r} field, got {self.template!r}"
            )
        if len(self.alphabet) < 2:
            raise ValueError(f"CanaryFormat.alphabet needs at least 2 symbols, got {self.alphabet!r}")
        if len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError(f"CanaryFormat.alphabet has repeated symbols: {self.alphabet!r}")
        if self.length < 1:
            raise ValueError(f"CanaryFormat.length must be >= 1, got {self.length}")

    @property
    def space_size(self) -> int:
        """``|R|``, the number of distinct secrets."""
        return len(self.alphabet) ** self.length

    @property
    def prefix(self) -> str:
        """Template text before the secret."""
        return self.template.split(SECRET_FIELD)[0]

    @property
    def suffix(self) -> str:
        """Template text after the secret."""
        return self.template.split(SECRET_FIELD)[1]

    def render(self, secret: str) -> str:
        """The canary text for ``secret`` (plain substitution, so braces elsewhere are kept as they are)."""
        return self.prefix + secret + self.suffix

    def secret_from_indices(self, indices: Iterable[int]) -> str:
        """Join the alphabet symbols at ``indices`` with the separator."""
        return self.separator.join(self.alphabet[int(i)] for i in indices)


@dataclass(frozen=True)
class Canary:
    """One planned canary, inserted or not: the auditor's ground truth.

    ``client_index`` is the client holding it (None for references planned by ``plan_canaries``);
    ``repetitions`` is how many copies go into that client's records (0 when not inserted).
    """

    canary_id: str
    format_index: int
    secret: str
    text: str
    client_index: int | None
    repetitions: int
    inserted: bool


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def target_token_length(fmt: CanaryFormat, encode: Encode) -> int:
    """Token length every candidate of ``fmt`` must have: the most common length of probe secrets.

    The probe uses a fixed seed so that canary planning and reference sampling, run at different
    times, agree on the target.
    """
    probe = np.random.default_rng(0).integers(0, len(fmt.alphabet), size=(_PROBE_SECRETS, fmt.length))
    counts = Counter(len(encode(fmt.render(fmt.secret_from_indices(row)))) for row in probe)
    # Ties go to the shorter length so the choice does not depend on dict order.
    best = max(counts.values())
    return min(length for length, count in counts.items() if count == best)


def _draw_secrets(
    fmt: CanaryFormat,
    n: int,
    rng: np.random.Generator,
    exclude: Iterable[str],
    accept: Callable[[str], bool] | None,
) -> list[str]:
    """``n`` distinct secrets not in ``exclude`` that pass ``accept``, uniformly among those that do."""
    if n < 0:
        raise ValueError(f"number of secrets must be >= 0, got {n}")
    excluded = set(exclude)
    available = fmt.space_size - len(excluded)
    if n > available:
        raise ValueError(
            f"asked for {n} distinct secrets but the format has only {fmt.space_size} "
            f"({len(fmt.alphabet)} symbols ** length {fmt.length}) of which {len(excluded)} are excluded"
        )
    if fmt.space_size <= _ENUMERATE_LIMIT and n > fmt.space_size // 4:
        codes = rng.permutation(fmt.space_size)
        chosen: list[str] = []
        base = len(fmt.alphabet)
        for code in codes:
            digits = [(int(code) // base**k) % base for k in range(fmt.length - 1, -1, -1)]
            secret = fmt.secret_from_indices(digits)
            if secret in excluded or (accept is not None and not accept(secret)):
                continue
            chosen.append(secret)
            if len(chosen) == n:
                return chosen
        raise ValueError(
            f"only {len(chosen)} secrets of format {fmt.template!r} satisfy the length constraint; {n} were asked for"
        )
    seen: set[str] = set(excluded)
    result: list[str] = []
    draws = 0
    max_draws = _MAX_DRAWS_PER_SECRET * max(n, 1)
    while len(result) < n:
        chunk = max(64, 2 * (n - len(result)))
        for row in rng.integers(0, len(fmt.alphabet), size=(chunk, fmt.length)):
            draws += 1
            secret = fmt.secret_from_indices(row)
            if secret in seen:
                continue
            seen.add(secret)
            if accept is not None and not accept(secret):
                continue
            result.append(secret)
            if len(result) == n:
                break
        if draws >= max_draws and len(result) < n:
            raise ValueError(
                f"could not find {n} distinct secrets of format {fmt.template!r} with the target token length "
                f"after {draws} draws ({len(result)} found); choose a separator that keeps symbols apart"
            )
    return result


def _length_filter(fmt: CanaryFormat, encode: Encode | None, target: int | None) -> Callable[[str], bool] | None:
    if encode is None:
        return None
    wanted = target_token_length(fmt, encode) if target is None else target

    def accept(secret: str) -> bool:
        return len(encode(fmt.render(secret))) == wanted

    return accept


def sample_secrets(
    fmt: CanaryFormat,
    n: int,
    rng: np.random.Generator | int,
    *,
    exclude: Iterable[str] = (),
    encode: Encode | None = None,
    target_length: int | None = None,
) -> list[str]:
    """``n`` distinct random secrets of ``fmt``, none in ``exclude``.

    With ``encode``, only secrets whose rendered text has ``target_length`` tokens are kept (default
    ``target_token_length(fmt, encode)``).
    """
    return _draw_secrets(fmt, n, _as_rng(rng), exclude, _length_filter(fmt, encode, target_length))


def plan_canaries(
    formats: Sequence[CanaryFormat],
    clients: Sequence[int],
    repetitions: Sequence[int] = (1, 4, 16),
    per_setting: int = 1,
    n_never_inserted: int = 8,
    *,
    rng: np.random.Generator | int,
    encode: Encode | None = None,
) -> list[Canary]:
    """Plan the canaries of a run: the full ground truth, inserted and never-inserted (docs/METHODS.md §8).

    For every format, client and repetition count ``r``, ``per_setting`` canaries are planned to be
    inserted ``r`` times into that client's records; in addition ``n_never_inserted`` canaries per
    format are never inserted (``client_index=None``, ``repetitions=0``) and serve as held-out
    references whose exposure should look like chance. All secrets are distinct within a format; with
    ``encode`` they all have the format's target token length.

    Canary ids are ``f{format}-c{client}-r{repetitions}-{k}`` and ``f{format}-ref-{k}``.
    """
    if not formats:
        raise ValueError("plan_canaries needs at least one CanaryFormat")
    if any(r < 1 for r in repetitions):
        raise ValueError(f"repetitions must all be >= 1, got {tuple(repetitions)}")
    if per_setting < 0 or n_never_inserted < 0:
        raise ValueError("per_setting and n_never_inserted must be >= 0")
    if len(set(clients)) != len(clients):
        raise ValueError(f"clients has duplicates: {list(clients)}")
    generator = _as_rng(rng)
    plan: list[Canary] = []
    for format_index, fmt in enumerate(formats):
        settings = [(client, reps) for client in clients for reps in repetitions]
        n_inserted = len(settings) * per_setting
        secrets = _draw_secrets(fmt, n_inserted + n_never_inserted, generator, (), _length_filter(fmt, encode, None))
        position = 0
        for client, reps in settings:
            for k in range(per_setting):
                secret = secrets[position]
                position += 1
                plan.append(
                    Canary(
                        canary_id=f"f{format_index}-c{client}-r{reps}-{k}",
                        format_index=format_index,
                        secret=secret,
                        text=fmt.render(secret),
                        client_index=client,
                        repetitions=reps,
                        inserted=True,
                    )
                )
        for k in range(n_never_inserted):
            secret = secrets[position]
            position += 1
            plan.append(
                Canary(
                    canary_id=f"f{format_index}-ref-{k}",
                    format_index=format_index,
                    secret=secret,
                    text=fmt.render(secret),
                    client_index=None,
                    repetitions=0,
                    inserted=False,
                )
            )
    return plan


def plan_one_run_canaries(
    fmt: CanaryFormat,
    m: int,
    client_index: int,
    rng: np.random.Generator | int,
    *,
    format_index: int = 0,
    encode: Encode | None = None,
) -> list[Canary]:
    """``m`` canaries for a one-run audit (Steinke, Nasr, Jagielski 2023; docs/METHODS.md §8).

    Each canary is included independently with probability 1/2; an included one is inserted once
    (``repetitions=1``), an excluded one keeps ``client_index`` (the client it was drawn for) with
    ``inserted=False`` and ``repetitions=0``. Ids are ``onerun-f{format}-c{client}-{k}``.
    """
    if m < 1:
        raise ValueError(f"a one-run audit needs m >= 1 canaries, got {m}")
    generator = _as_rng(rng)
    secrets = _draw_secrets(fmt, m, generator, (), _length_filter(fmt, encode, None))
    included = generator.random(m) < 0.5
    return [
        Canary(
            canary_id=f"onerun-f{format_index}-c{client_index}-{k}",
            format_index=format_index,
            secret=secret,
            text=fmt.render(secret),
            client_index=client_index,
            repetitions=1 if bool(flag) else 0,
            inserted=bool(flag),
        )
        for k, (secret, flag) in enumerate(zip(secrets, included, strict=True))
    ]


def insert_canaries(
    records: list[str], canaries: Sequence[Canary], client_index: int, rng: np.random.Generator | int
) -> list[str]:
    """A new record list with each inserted canary of ``client_index`` added ``repetitions`` times.

    Each copy is its own record, placed at a uniformly random position; the original records keep
    their relative order. ``records`` is not modified.
    """
    generator = _as_rng(rng)
    copies = [c.text for c in canaries if c.inserted and c.client_index == client_index for _ in range(c.repetitions)]
    if not copies:
        return list(records)
    total = len(records) + len(copies)
    slots = np.zeros(total, dtype=bool)
    slots[generator.choice(total, size=len(copies), replace=False)] = True
    order = generator.permutation(len(copies))
    result: list[str] = []
    original = iter(records)
    inserted = iter(order)
    for is_canary in slots:
        result.append(copies[next(inserted)] if is_canary else next(original))
    return result


def equal_length_candidates(
    fmt: CanaryFormat,
    n: int,
    encode: Encode,
    rng: np.random.Generator | int,
    *,
    exclude: Iterable[str] = (),
    target_length: int | None = None,
) -> list[str]:
    """``n`` distinct reference candidate texts of ``fmt`` with the format's target token length.

    Pass the canaries' secrets as ``exclude`` so that no reference duplicates a canary. Raises
    ``ValueError`` when ``n`` candidates of one length cannot be found.
    """
    secrets = sample_secrets(fmt, n, rng, exclude=exclude, encode=encode, target_length=target_length)
    return [fmt.render(secret) for secret in secrets]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def candidate_token_ids(fmt: CanaryFormat, texts: Sequence[str], encode: Encode) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``(N, T)`` of equal-length candidate texts and the ``(T,)`` mask of their secret tokens.

    Secret tokens are those not shared with the tokenisation of the template's own prefix and suffix;
    a token that straddles the boundary (byte-level BPE attaches the space before a digit to the digit)
    counts as secret. The span is the union over all texts, so score the canary and its references in
    one call to get one mask for all of them.
    """
    if not texts:
        raise ValueError("candidate_token_ids needs at least one text")
    encoded = [encode(text) for text in texts]
    lengths = {len(ids) for ids in encoded}
    if len(lengths) != 1:
        raise ValueError(
            f"candidates of format {fmt.template!r} have token lengths {sorted(lengths)}; all must be equal "
            "(sample them with equal_length_candidates / plan with encode=)"
        )
    width = lengths.pop()
    prefix_ids = encode(fmt.prefix)
    suffix_ids = encode(fmt.suffix)
    start = min(_common_prefix(prefix_ids, ids) for ids in encoded)
    end = max(width - _common_prefix(suffix_ids[::-1], ids[::-1]) for ids in encoded)
    if end <= start:
        raise ValueError(f"no secret tokens found for format {fmt.template!r}")
    mask = np.zeros(width, dtype=bool)
    mask[start:end] = True
    return np.asarray(encoded, dtype=np.int64), mask


def log2_space_size(fmt: CanaryFormat) -> float:
    """``log2 |R|``: the largest exposure a canary of ``fmt`` can have."""
    return fmt.length * math.log2(len(fmt.alphabet))
