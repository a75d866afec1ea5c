"""Where the DP mechanism's randomness comes from (docs/METHODS.md §2, "Randomness").

DP-SGD's guarantee assumes the Gaussian noise and the Poisson batches are secret from whoever
sees the update. A generator seeded from public values (the run seed, the partition, the round)
lets the server regenerate the noise and subtract it, and learn which records were in each
batch: ε is then void against the server. So the mechanism draws from node-local OS entropy:
every :func:`noise_source` call reads fresh bytes from ``os.urandom`` and seeds

- a ``torch.Generator`` for the Gaussian noise (64-bit seed, the widest torch accepts), and
- a numpy ``Generator`` (PCG64 through a 256-bit ``SeedSequence``) for Poisson sampling.

Neither seed is stored, logged or sent. The generators themselves are fast PRNGs, not CSPRNGs;
what an observer would have to guess is the 64/256-bit seed, and it never sees a raw draw, only
draws added to clipped gradients. Opacus' ``secure_mode`` (used by :class:`~privacy.dp.session.DPSession`)
additionally sums four Gaussian draws per coordinate against floating-point attacks on the
noise's low bits.

``reproducible_key`` brings back the seeded behaviour (``privacy.reproducible_noise = true``): for
tests and benchmarks only, and every run that uses it says "not private against the server".
Everything that is not the mechanism (data generation, model initialisation, rollouts, the
KMeans filter) stays seeded from the run seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["NoiseSource", "noise_source", "reproducible_key", "secure_generator"]

_TORCH_SEED_BYTES = 8  # torch.Generator.manual_seed takes at most 64 bits
_NUMPY_SEED_BYTES = 32


@dataclass(frozen=True)
class NoiseSource:
    """The two generators one DP training call draws from.

    Attributes
    ----------
    generator : Gaussian noise of every DP-SGD step (and of noise-only steps).
    rng : Poisson sampling of the batches.
    reproducible : True when both were seeded from public values (not private against the server).
    """

    generator: torch.Generator
    rng: np.random.Generator
    reproducible: bool


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from 64 bits of OS entropy (never stored)."""
    seed = int.from_bytes(os.urandom(_TORCH_SEED_BYTES), "little")
    return torch.Generator(device=device).manual_seed(seed)


def reproducible_key(*parts: object) -> str:
    """The public key the seeded (test-only) mode derives its generators from, e.g. seed/partition/round."""
    return "/".join(map(str, parts))


def noise_source(device: torch.device | str = "cpu", *, reproducible: str | None = None) -> NoiseSource:
    """Generators for the DP mechanism: OS entropy, or (tests only) seeded from a public key.

    Parameters
    ----------
    device : where the torch generator lives (the model's device).
    reproducible : a :func:`reproducible_key`; None (the default) draws fresh OS entropy.
    """
    if reproducible is None:
        rng = np.random.default_rng(np.random.SeedSequence(
            int.from_bytes(os.urandom(_NUMPY_SEED_BYTES), "little")))
        return NoiseSource(secure_generator(device), rng, reproducible=False)
    digest = hashlib.sha256(reproducible.encode()).digest()
    torch_seed = int.from_bytes(digest[:_TORCH_SEED_BYTES], "little")
    rng = np.random.default_rng(np.random.SeedSequence(int.from_bytes(digest, "little")))
    return NoiseSource(torch.Generator(device=device).manual_seed(torch_seed), rng, reproducible=True)
