"""CKKS key material: generation, files, loading, fingerprints (docs/METHODS.md §1, §7).

Clients share one secret context (``secret.ctx``); the server gets a public context
(``public.ctx``) with the secret key stripped and no relinearisation or Galois keys,
because it only adds ciphertexts. Files are created with mode 0600 inside a 0700
directory, and loaders refuse files that group or others can access.

TenSEAL serializes contexts as protocol buffers; this module reads them
(through :mod:`privacy.he.wire`) to

* fingerprint a key set: SHA-256 over the serialized encryption parameters and
  public key, which both contexts carry byte-identically;
* hand the secret key to TenSEAL's bundled SEAL bindings (``tenseal.sealapi``),
  which expose SEAL's seeded symmetric encryption that TenSEAL's own vectors lack.

A fingerprint identifies a key set, it does not authenticate anything: a party
holding the secret context can produce valid-looking ciphertexts. Both ends must run
the same TenSEAL version, since the fingerprint hashes SEAL's compressed key bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import tenseal as ts
from tenseal import sealapi

from fedveil.files import write_private
from privacy.he.errors import KeyMaterialError
from privacy.he.profiles import DEFAULT_PROFILE, HEProfile, get_profile, resolve_profile
from privacy.he.wire import proto_fields, single_bytes

SECRET_FILE: Final[str] = "secret.ctx"
PUBLIC_FILE: Final[str] = "public.ctx"
MANIFEST_FILE: Final[str] = "manifest.json"
MANIFEST_FORMAT: Final[str] = "fedveil-he-keys/1"
MAX_KEY_FILE_BYTES: Final[int] = 64 * 1024 * 1024

# TenSEALContextProto field numbers (tenseal/proto/tensealcontext.proto).
_CTX_PARMS, _CTX_PUBLIC, _CTX_PRIVATE = 1, 2, 3
_PUB_KEY, _PUB_RELIN, _PUB_GALOIS = 1, 4, 5
_PRIV_SECRET_KEY = 1


# --------------------------------------------------------------------------- generation
def generate_contexts(profile: HEProfile | str = DEFAULT_PROFILE) -> tuple[bytes, bytes]:
    """Create a fresh key set and return ``(secret context bytes, public context bytes)``.

    The secret context holds the secret and public keys (clients); the public one
    holds only parameters and the public key (server). Neither carries
    relinearisation or Galois keys: aggregation is additions only (docs/METHODS.md §7).
    """
    p = resolve_profile(profile)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes))
    ctx.global_scale = p.scale
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    public_ctx = ctx.copy()
    public_ctx.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
    public = public_ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    if _CTX_PRIVATE in proto_fields(public):  # never ship a secret to the server, whatever TenSEAL does
        raise RuntimeError("TenSEAL kept private material in the public context")
    return secret, public


def write_keys(
    out_dir: str | os.PathLike[str], profile_name: str = DEFAULT_PROFILE, *, overwrite: bool = False
) -> Path:
    """Generate a key set and write ``secret.ctx``, ``public.ctx`` and ``manifest.json``.

    Parameters
    ----------
    out_dir : path
        Created with mode 0700 if missing; an existing directory is tightened to 0700.
    profile_name : str
        A key of :data:`privacy.he.profiles.PROFILES`.
    overwrite : bool
        Replace an existing key set. Off by default: rotating keys mid-federation
        makes every in-flight ciphertext undecryptable.

    Returns
    -------
    Path
        The key directory.
    """
    profile = get_profile(profile_name)
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise KeyMaterialError(f"{out} exists and is not a directory")
        existing = [n for n in (SECRET_FILE, PUBLIC_FILE, MANIFEST_FILE) if (out / n).exists()]
        if existing and not overwrite:
            raise KeyMaterialError(f"{out} already holds {existing}; refusing to overwrite keys (pass overwrite=True)")
        os.chmod(out, 0o700)
    else:
        out.mkdir(mode=0o700, parents=True)
    secret, public = generate_contexts(profile)
    write_private(out / SECRET_FILE, secret)
    write_private(out / PUBLIC_FILE, public)
    manifest = {
        "format": MANIFEST_FORMAT,
        "scheme": "CKKS",
        "profile": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(profile).items()},
        "security_bits": profile.security_bits,
        "key_fingerprint": fingerprint_from_bytes(public),
        "files": {
            SECRET_FILE: {"sha256": hashlib.sha256(secret).hexdigest(), "bytes": len(secret), "holder": "clients"},
            PUBLIC_FILE: {"sha256": hashlib.sha256(public).hexdigest(), "bytes": len(public), "holder": "server"},
        },
        "tenseal_version": ts.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_private(out / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return out


# --------------------------------------------------------------------------- loading
def read_manifest(key_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``manifest.json`` from a key directory written by :func:`write_keys`."""
    path = Path(key_dir)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyMaterialError(f"{path}: manifest missing; run `fedveil keys init`") from None
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read manifest ({exc.strerror})") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyMaterialError(f"{path}: manifest is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise KeyMaterialError(f"{path}: not a fedveil key manifest (expected format {MANIFEST_FORMAT!r})")
    return data


def _read_key_file(path: str | os.PathLike[str], default_name: str) -> tuple[Path, bytes]:
    p = Path(path)
    if p.is_dir():
        p = p / default_name
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise KeyMaterialError(f"{p}: key file missing; run `fedveil keys init`") from None
    except OSError as exc:
        raise KeyMaterialError(f"{p}: cannot open key file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())  # checked on the open descriptor, so a swapped path cannot slip through
        if not stat.S_ISREG(st.st_mode):
            raise KeyMaterialError(f"{p}: not a regular file")
        if os.name == "posix" and st.st_mode & 0o077:
            raise KeyMaterialError(
                f"{p}: mode {stat.S_IMODE(st.st_mode):04o} lets group/others access key material; "
                f"refusing to load it (run `chmod 600 {p}`)"
            )
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyMaterialError(f"{p}: {st.st_size} bytes is too large for a key file")
        data = fh.read()
    manifest_path = p.parent / MANIFEST_FILE
    if manifest_path.exists():
        entry = read_manifest(manifest_path).get("files", {}).get(p.name)
        if isinstance(entry, dict) and entry.get("sha256") != hashlib.sha256(data).hexdigest():
            raise KeyMaterialError(f"{p}: contents differ from the sha256 recorded in {manifest_path}")
    return p, data


def _parse_context(p: Path, data: bytes) -> tuple[ts.Context, bool]:
    try:
        private = _CTX_PRIVATE in proto_fields(data)
        ctx = ts.context_from(data)
    except (ValueError, RuntimeError, TypeError) as exc:  # what TenSEAL raises on foreign bytes
        raise KeyMaterialError(f"{p}: not a TenSEAL context ({exc})") from None
    if ctx.data.seal_context().key_context_data().parms().scheme().name != "CKKS":
        raise KeyMaterialError(f"{p}: context is not CKKS")
    return ctx, private or ctx.is_private()


def load_secret_context(path: str | os.PathLike[str]) -> ts.Context:
    """Load the clients' secret context (``secret.ctx``, or a key directory).

    Raises
    ------
    KeyMaterialError
        Missing file, group/world-accessible file, bytes that are not a CKKS
        context, a public (server) context, or a mismatch with ``manifest.json``.
    """
    p, data = _read_key_file(path, SECRET_FILE)
    ctx, private = _parse_context(p, data)
    if not private:
        raise KeyMaterialError(
            f"{p}: this is a public (server) context without a secret key; clients need {SECRET_FILE}"
        )
    return ctx


def load_public_context(path: str | os.PathLike[str]) -> ts.Context:
    """Load the server's public context (``public.ctx``, or a key directory).

    Raises
    ------
    KeyMaterialError
        As :func:`load_secret_context`, and when the file holds a secret key: the
        server must never be given ``secret.ctx``.
    """
    p, data = _read_key_file(path, PUBLIC_FILE)
    ctx, private = _parse_context(p, data)
    if private:
        raise KeyMaterialError(f"{p}: holds a secret key; the server must only get {PUBLIC_FILE}")
    return ctx


# --------------------------------------------------------------------------- fingerprints
_FINGERPRINTS: weakref.WeakKeyDictionary[ts.Context, str] = weakref.WeakKeyDictionary()


def fingerprint_from_bytes(context_bytes: bytes) -> str:
    """Key-set fingerprint of a serialized context: SHA-256 of parameters + public key (hex, 32 chars)."""
    fields = proto_fields(context_bytes)
    parms = single_bytes(fields, _CTX_PARMS)
    public = single_bytes(fields, _CTX_PUBLIC)
    pub_key = single_bytes(proto_fields(public), _PUB_KEY) if public is not None else None
    if parms is None or pub_key is None:
        raise KeyMaterialError("context carries no public key; fedveil contexts are asymmetric")
    h = hashlib.sha256(b"fedveil-he-key/1\0")
    for part in (parms, pub_key):
        h.update(struct.pack("<Q", len(part)))
        h.update(part)
    return h.hexdigest()[:32]


def key_fingerprint(ctx: ts.Context) -> str:
    """Fingerprint of the key set ``ctx`` belongs to; equal for its secret and public contexts."""
    cached = _FINGERPRINTS.get(ctx)
    if cached is None:
        raw = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
        cached = _FINGERPRINTS[ctx] = fingerprint_from_bytes(raw)
    return cached


def context_shape(ctx: ts.Context) -> tuple[int, int, int]:
    """``(N, total coefficient bits, data-level bits)`` of a context, to compare with a profile."""
    seal_ctx = ctx.data.seal_context()
    key_data = seal_ctx.key_context_data()
    return (
        int(key_data.parms().poly_modulus_degree()),
        int(key_data.total_coeff_modulus_bit_count()),
        int(seal_ctx.first_context_data().total_coeff_modulus_bit_count()),
    )


def profile_matches(ctx: ts.Context, profile: HEProfile) -> bool:
    """True if ``ctx`` has the ring degree and modulus sizes of ``profile``."""
    return context_shape(ctx) == (profile.poly_modulus_degree, profile.key_bits, profile.data_bits)


# --------------------------------------------------------------------------- SEAL bridge
@contextlib.contextmanager
def private_tempdir() -> Iterator[Path]:
    """A 0700 scratch directory, in RAM (``/dev/shm``) where available.

    ``tenseal.sealapi`` reads and writes SEAL objects only through file paths.
    """
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="fedveil-he-", dir=base) as d:
        yield Path(d)


class SealSecretEncryptor:
    """SEAL objects for seeded secret-key encryption under a TenSEAL secret context.

    Built from the context's own serialized parameters and secret key, so the
    ciphertexts share its ``parms_id`` and load with ``ts.ckks_vector_from``.
    """

    def __init__(self, ctx: ts.Context) -> None:
        raw = ctx.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        fields = proto_fields(raw)
        parms = single_bytes(fields, _CTX_PARMS)
        private = single_bytes(fields, _CTX_PRIVATE)
        secret = single_bytes(proto_fields(private), _PRIV_SECRET_KEY) if private is not None else None
        if parms is None or secret is None:
            raise KeyMaterialError("seeded encryption needs the secret context (secret.ctx)")
        with private_tempdir() as d:
            write_private(d / "parms", parms)
            write_private(d / "sk", secret)
            enc_parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
            enc_parms.load(str(d / "parms"))
            self.seal_context = sealapi.SEALContext(enc_parms, True, sealapi.SEC_LEVEL_TYPE.TC128)
            secret_key = sealapi.SecretKey()
            secret_key.load(self.seal_context, str(d / "sk"))
        self.encryptor = sealapi.Encryptor(self.seal_context, secret_key)
        self.encoder = sealapi.CKKSEncoder(self.seal_context)

    def encrypt_seeded(self, values: list[float], scale: float, scratch: Path) -> bytes:
        """Encrypt one slot vector; return SEAL's seeded ciphertext bytes (one polynomial + seed)."""
        plain = sealapi.Plaintext()
        self.encoder.encode(values, scale, plain)
        target = str(scratch / "ct")
        self.encryptor.encrypt_symmetric(plain).save(target)
        return Path(target).read_bytes()


_SEEDED: weakref.WeakKeyDictionary[ts.Context, SealSecretEncryptor] = weakref.WeakKeyDictionary()


def seeded_encryptor(ctx: ts.Context) -> SealSecretEncryptor:
    """Cached :class:`SealSecretEncryptor` for a secret context."""
    enc = _SEEDED.get(ctx)
    if enc is None:
        enc = _SEEDED[ctx] = SealSecretEncryptor(ctx)
    return enc
