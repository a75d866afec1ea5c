"""Wire formats of encrypted payloads (docs/METHODS.md §7).

* TenSEAL's protocol buffers (``tenseal/proto``), read and written directly in a few
  lines instead of generated code: contexts (for fingerprints and the secret key)
  and ``CKKSVectorProto`` chunks, one SEAL ciphertext each.
* Structural checks of a chunk before SEAL sees it (framing, declared sizes, scale,
  SEAL header), so damage is reported with a precise reason.
* The payload dataclasses and their encoding as two uint8 arrays for a Flower
  ``ArrayRecord``: a JSON header (with a SHA-256 over header and chunks, a transit
  checksum, not a signature) and the concatenated chunks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from privacy.he.errors import CiphertextError
from privacy.he.profiles import HEProfile

ALLOWED_DTYPES: Final[tuple[str, ...]] = ("float16", "float32", "float64")
PAYLOAD_FORMAT: Final[str] = "fedveil-ckks-payload/1"
HEADER_KEY: Final[str] = "he.header"
CHUNKS_KEY: Final[str] = "he.chunks"
MAX_HEADER_BYTES: Final[int] = 8 * 1024 * 1024
_SEAL_MAGIC: Final[bytes] = b"\x5e\xa1"  # 0xA15E little-endian, first bytes of every SEAL object


# --------------------------------------------------------------------------- protocol buffers
class ProtoTruncated(ValueError):
    """A protocol-buffer field runs past the end of the buffer."""


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    out, shift = 0, 0
    while True:
        if i >= len(buf):
            raise ProtoTruncated("varint runs past the end of the buffer")
        byte = buf[i]
        i += 1
        out |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return out, i
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def proto_fields(buf: bytes) -> dict[int, list[int | bytes]]:
    """Split a protocol-buffer message into ``{field number: [values]}``.

    Varints come back as ``int``; length-delimited, 64-bit and 32-bit fields as ``bytes``.
    Raises :class:`ProtoTruncated` when a field overruns, ``ValueError`` on other damage.
    """
    fields: dict[int, list[int | bytes]] = {}
    i, n = 0, len(buf)
    while i < n:
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        value: int | bytes
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire in (1, 2, 5):
            if wire == 2:
                length, i = _read_varint(buf, i)
            else:
                length = 8 if wire == 1 else 4
            if i + length > n:
                raise ProtoTruncated(f"field {number} needs {length} bytes, {n - i} left")
            value, i = buf[i : i + length], i + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def packed_varints(data: bytes) -> list[int]:
    """Decode a packed repeated varint field."""
    out, i = [], 0
    while i < len(data):
        value, i = _read_varint(data, i)
        out.append(value)
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def ckks_vector_proto(size: int, ciphertext: bytes, scale: float) -> bytes:
    """Serialize one SEAL ciphertext as a TenSEAL ``CKKSVectorProto`` (sizes, ciphertexts, scale)."""
    sizes = _varint(size)
    return (
        _varint(1 << 3 | 2) + _varint(len(sizes)) + sizes
        + _varint(2 << 3 | 2) + _varint(len(ciphertext)) + ciphertext
        + _varint(3 << 3 | 1) + struct.pack("<d", scale)
    )


def single_bytes(fields: dict[int, list[int | bytes]], number: int) -> bytes | None:
    """The last value of a length-delimited field (protobuf's "last one wins"), or None."""
    values = fields.get(number)
    if not values or not isinstance(values[-1], bytes):
        return None
    return values[-1]


# --------------------------------------------------------------------------- payloads
@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one array in a payload."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def size(self) -> int:
        """Number of values."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class EncryptedPayload:
    """Ciphertext chunks of a flattened, weighted set of named arrays.

    ``fingerprint`` identifies the key set (see :func:`privacy.he.keys.key_fingerprint`).
    """

    chunks: tuple[bytes, ...]
    specs: tuple[TensorSpec, ...]
    n_values: int
    profile: str
    fingerprint: str


def payload_nbytes(payload: EncryptedPayload) -> int:
    """Ciphertext bytes in a payload (what goes on the wire, header excluded)."""
    return sum(len(c) for c in payload.chunks)


def max_chunk_bytes(p: HEProfile) -> int:
    """Size of an uncompressed size-2 ciphertext at the top data level plus framing.

    Anything larger cannot be one of ours; checking first keeps SEAL from
    decompressing an arbitrarily large blob.
    """
    return 2 * p.poly_modulus_degree * (len(p.coeff_mod_bit_sizes) - 1) * 8 + 1024


def inspect_chunk(chunk: bytes, size: int, p: HEProfile, index: int) -> None:
    """Cheap structural checks before handing bytes to SEAL."""
    where = f"chunk {index}"
    if not isinstance(chunk, bytes):
        raise CiphertextError("malformed", f"{where} is {type(chunk).__name__}, not bytes")
    if len(chunk) > max_chunk_bytes(p):
        raise CiphertextError("oversized", f"{where} has {len(chunk)} bytes, max {max_chunk_bytes(p)}")
    try:
        fields = proto_fields(chunk)
        sizes = [v for raw in fields.get(1, []) for v in (packed_varints(raw) if isinstance(raw, bytes) else [raw])]
    except ProtoTruncated as exc:
        raise CiphertextError("truncated", f"{where}: {exc}") from None
    except ValueError as exc:
        raise CiphertextError("garbled", f"{where}: {exc}") from None
    cts, scale = fields.get(2, []), fields.get(3, [])
    if set(fields) - {1, 2, 3} or len(cts) != 1 or not isinstance(cts[0], bytes):
        raise CiphertextError("garbled", f"{where} is not a single-ciphertext CKKS vector")
    if sizes != [size]:
        raise CiphertextError("wrong_length", f"{where} declares sizes {sizes[:4]}, expected [{size}]")
    if len(scale) != 1 or not isinstance(scale[0], bytes) or len(scale[0]) != 8:
        raise CiphertextError("garbled", f"{where} has no scale")
    if struct.unpack("<d", scale[0])[0] != p.scale:
        raise CiphertextError("wrong_params",
                              f"{where} scale differs from profile {p.name!r} (2^{p.global_scale_bits})")
    ct = cts[0]
    if len(ct) < 16 or ct[:2] != _SEAL_MAGIC or ct[2] != 16:
        raise CiphertextError("garbled", f"{where} does not start with a SEAL header")
    declared = struct.unpack("<Q", ct[8:16])[0]
    if declared > len(ct):
        raise CiphertextError("truncated", f"{where}: SEAL object declares {declared} bytes, {len(ct)} present")
    if declared != len(ct):
        raise CiphertextError("garbled", f"{where}: SEAL object declares {declared} bytes, {len(ct)} present")


# --------------------------------------------------------------------------- transport
def _header_digest(header: Mapping[str, Any], chunks: Sequence[bytes]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def payload_to_arrays(payload: EncryptedPayload) -> dict[str, np.ndarray]:
    """Encode a payload as two uint8 arrays (JSON header + concatenated chunks) for a Flower ArrayRecord.

    The header carries a SHA-256 over itself and the chunks, so transport damage is
    caught by :func:`payload_from_arrays`. It is a checksum, not a signature.
    """
    header: dict[str, Any] = {
        "format": PAYLOAD_FORMAT,
        "profile": payload.profile,
        "n_values": payload.n_values,
        "fingerprint": payload.fingerprint,
        "specs": [[s.name, list(s.shape), s.dtype] for s in payload.specs],
        "chunk_lengths": [len(c) for c in payload.chunks],
    }
    header["digest"] = _header_digest(header, payload.chunks)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return {
        HEADER_KEY: np.frombuffer(raw, dtype=np.uint8),
        CHUNKS_KEY: np.frombuffer(b"".join(payload.chunks), dtype=np.uint8),
    }


def _uint8_bytes(arrays: Mapping[str, Any], key: str) -> bytes:
    arr = arrays.get(key) if isinstance(arrays, Mapping) else None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 1:
        raise CiphertextError("malformed", f"{key!r} must be a 1-D uint8 array")
    return arr.tobytes()


def _parse_specs(raw: Any) -> tuple[TensorSpec, ...]:
    specs = []
    for item in raw:
        name, shape, dtype = item
        if not (isinstance(name, str) and isinstance(shape, list) and dtype in ALLOWED_DTYPES):
            raise TypeError("bad spec")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise TypeError("bad shape")
        specs.append(TensorSpec(name, tuple(shape), dtype))
    return tuple(specs)


def payload_from_arrays(arrays: Mapping[str, Any]) -> EncryptedPayload:
    """Inverse of :func:`payload_to_arrays`; raises :class:`CiphertextError` on malformed input."""
    head = _uint8_bytes(arrays, HEADER_KEY)
    if len(head) > MAX_HEADER_BYTES:
        raise CiphertextError("oversized", f"header of {len(head)} bytes")
    body = _uint8_bytes(arrays, CHUNKS_KEY)
    try:
        header = json.loads(head.decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != PAYLOAD_FORMAT:
            raise TypeError("not a fedveil payload header")
        lengths = header["chunk_lengths"]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths):
            raise TypeError("bad chunk_lengths")
        specs = _parse_specs(header["specs"])
        n_values, profile, fingerprint = header["n_values"], header["profile"], header["fingerprint"]
        if not (isinstance(n_values, int) and isinstance(profile, str) and isinstance(fingerprint, str)):
            raise TypeError("bad header field types")
        digest = header.pop("digest")
    except (UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise CiphertextError("malformed", f"payload header unreadable: {exc}") from None
    if sum(lengths) > len(body):
        raise CiphertextError("truncated", f"chunks declare {sum(lengths)} bytes, {len(body)} received")
    if sum(lengths) != len(body):
        raise CiphertextError("malformed", f"chunks declare {sum(lengths)} bytes, {len(body)} received")
    offsets = np.cumsum([0, *lengths]).tolist()
    chunks = tuple(body[a:b] for a, b in itertools.pairwise(offsets))
    if digest != _header_digest(header, chunks):
        raise CiphertextError("corrupt", "payload digest mismatch (damaged in transit)")
    return EncryptedPayload(chunks, specs, n_values, profile, fingerprint)
