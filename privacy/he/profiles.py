"""CKKS parameter profiles for encrypted aggregation (docs/METHODS.md §7).

A profile fixes the ring degree ``N``, the coefficient-modulus chain, the encoding
scale and the range of values it keeps accurate. Only ciphertext additions happen
on the server, so the chain needs no levels for rescaling: the last prime is SEAL's
special (key-switching) prime and every other prime holds data.

Range (``value_bound``), derived from SEAL's CKKS encoder and decoder:

* encoding refuses a plaintext whose coefficients need ``data_bits - 1`` bits or
  more, so each client's (weighted) values must satisfy
  ``|v| * 2**scale_bits < 2**(data_bits - 2)``;
* decoding is exact while the summed coefficients stay below ``q/2``, i.e. twice
  that bound.

For ``compact`` (one 32-bit data prime, scale 2^30) ``value_bound`` = 1 is exactly
that encoding limit; ``conservative`` takes 2^20, far inside its 2^58 limit (errors
measured at |v| = 1e6 stay below 1e-8). With weights that sum to at most one
(clients pre-scale by ``n_c / sum(n)``, docs/METHODS.md §7) and every client's values
within ``value_bound``, the sum is within ``value_bound`` too, leaving a 2x margin
before decoding would wrap around.

Measured with ``bench/he_bench.py`` (10 clients, 1e6 float32 values each, uniform in
[-1, 1], weights ``n_c / sum(n)``; error = max |HE weighted mean - numpy weighted
mean|; bytes per value uploaded by one client, full-slot ciphertexts):

============== ===== ============ ===== =========== ========== ========
profile        N     coeff bits   scale value_bound bytes/val  max err
============== ===== ============ ===== =========== ========== ========
compact        4096  [32, 32]     2^30  1.0         16.6       2.0e-5
compact-seeded 4096  [32, 32]     2^30  1.0         8.3 (up)   2.2e-6
conservative   8192  [60, 40, 40] 2^40  2^20        57.6       4.5e-8
============== ===== ============ ===== =========== ========== ========

``compact-seeded`` uses the same keys as ``compact``; clients encrypt with the
shared secret key and SEAL's seeded serialization, which replaces one of the two
ciphertext polynomials by a PRNG seed and halves the upload. Results sent back by
the server are ordinary (unseeded) ciphertexts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from fedveil.registry import Registry

#: Largest total coefficient-modulus bit count for 128-bit classical security
#: (HomomorphicEncryption.org standard, the table SEAL enforces).
MAX_COEFF_BITS_128: Final[dict[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}

DEFAULT_PROFILE: Final[str] = "compact"


@dataclass(frozen=True)
class HEProfile:
    """CKKS parameters for add-only aggregation.

    Parameters
    ----------
    name : str
        Registry key (see :data:`PROFILES`).
    poly_modulus_degree : int
        Ring degree ``N``; a ciphertext packs ``N/2`` values.
    coeff_mod_bit_sizes : tuple of int
        Prime sizes of the coefficient modulus; the last one is SEAL's special prime.
    global_scale_bits : int
        Values are encoded at scale ``2**global_scale_bits``.
    value_bound : float
        Largest ``|value|`` each client may encrypt (after weighting) and largest
        ``|sum|`` the profile keeps accurate, under the pre-scaling rule of
        docs/METHODS.md §7 (weights summing to at most one).
    security_bits : int
        Classical security level; only 128 is supported (SEAL's default ``tc128``).
    seeded_symmetric : bool
        Encrypt with the secret key and upload seeded ciphertexts (about half the bytes).
    """

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    global_scale_bits: int
    value_bound: float
    security_bits: int = 128
    seeded_symmetric: bool = False

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if self.security_bits != 128:
            raise ValueError(f"profile {self.name!r}: security_bits={self.security_bits}; only 128 is supported")
        if n not in MAX_COEFF_BITS_128:
            raise ValueError(
                f"profile {self.name!r}: poly_modulus_degree={n}; allowed: {sorted(MAX_COEFF_BITS_128)}"
            )
        bits = self.coeff_mod_bit_sizes
        if len(bits) < 2 or any(not 17 <= b <= 60 for b in bits):
            raise ValueError(
                f"profile {self.name!r}: coeff_mod_bit_sizes={bits}; need >= 2 primes of 17..60 bits"
            )
        if sum(bits) > MAX_COEFF_BITS_128[n]:
            raise ValueError(
                f"profile {self.name!r}: {sum(bits)} coefficient bits exceed the 128-bit security "
                f"limit of {MAX_COEFF_BITS_128[n]} for N={n}"
            )
        if not (math.isfinite(self.value_bound) and self.value_bound > 0):
            raise ValueError(f"profile {self.name!r}: value_bound must be a positive finite number")
        needed = self.global_scale_bits + math.log2(self.value_bound) + 2
        if needed > self.data_bits:
            raise ValueError(
                f"profile {self.name!r}: scale 2^{self.global_scale_bits} with value_bound "
                f"{self.value_bound} needs {needed:.1f} data bits, the chain has {self.data_bits}"
            )

    @property
    def slots(self) -> int:
        """Values per ciphertext, ``N/2``."""
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        """Encoding scale ``2**global_scale_bits``."""
        return float(2**self.global_scale_bits)

    @property
    def data_bits(self) -> int:
        """Bits of the modulus that fresh ciphertexts live under (all but the special prime)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def key_bits(self) -> int:
        """Total coefficient-modulus bits, special prime included."""
        return sum(self.coeff_mod_bit_sizes)


# he.profile: name -> CKKS parameters (one registration per profile).
PROFILES: Final[Registry[HEProfile]] = Registry("he.profile")
for _profile in (
    HEProfile(
        name="compact",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(32, 32),
        global_scale_bits=30,
        value_bound=1.0,
    ),
    HEProfile(
        name="compact-seeded",
        poly_modulus_degree=4096,
        coeff_mod_bit_sizes=(32, 32),
        global_scale_bits=30,
        value_bound=1.0,
        seeded_symmetric=True,
    ),
    HEProfile(
        name="conservative",
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=(60, 40, 40),
        global_scale_bits=40,
        value_bound=float(2**20),
    ),
):
    PROFILES.add(_profile.name, _profile)


def get_profile(name: str) -> HEProfile:
    """Return the registered profile called ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not a registered profile; the message lists the allowed names.
    """
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown HE profile {name!r}; allowed: {sorted(PROFILES)}") from None


def resolve_profile(profile: HEProfile | str) -> HEProfile:
    """Accept a profile object or its registered name."""
    return profile if isinstance(profile, HEProfile) else get_profile(profile)
