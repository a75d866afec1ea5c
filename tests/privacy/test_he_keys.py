"""Key material for CKKS aggregation (docs/METHODS.md §1, §7): files, modes, who can decrypt."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from privacy.he import (
    PROFILES,
    HEProfile,
    KeyMaterialError,
    decrypt_payload,
    encrypt_arrays,
    generate_contexts,
    get_profile,
    key_fingerprint,
    load_public_context,
    load_secret_context,
    read_manifest,
    write_keys,
)
from privacy.he.wire import proto_fields

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    old = os.umask(0)  # a permissive umask must not leak into the file modes
    try:
        return write_keys(tmp_path_factory.mktemp("fed") / "keys", "compact")
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@posix_only
def test_key_files_are_owner_only(key_dir: Path) -> None:
    assert _mode(key_dir) == 0o700
    for name in ("secret.ctx", "public.ctx", "manifest.json"):
        assert _mode(key_dir / name) == 0o600, name
    assert sorted(p.name for p in key_dir.iterdir()) == ["manifest.json", "public.ctx", "secret.ctx"]


def test_manifest_records_profile_and_fingerprints(key_dir: Path) -> None:
    manifest = read_manifest(key_dir)
    profile = get_profile("compact")
    assert manifest["profile"]["poly_modulus_degree"] == profile.poly_modulus_degree
    assert tuple(manifest["profile"]["coeff_mod_bit_sizes"]) == profile.coeff_mod_bit_sizes
    assert manifest["security_bits"] == 128
    for name in ("secret.ctx", "public.ctx"):
        assert manifest["files"][name]["sha256"] == hashlib.sha256((key_dir / name).read_bytes()).hexdigest()
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert manifest["key_fingerprint"] == key_fingerprint(load_public_context(key_dir))
    assert manifest["key_fingerprint"] == key_fingerprint(load_secret_context(key_dir))


def test_server_context_holds_no_secret_and_cannot_decrypt(key_dir: Path) -> None:
    raw = (key_dir / "public.ctx").read_bytes()
    assert 3 not in proto_fields(raw)  # TenSEALContextProto.private_context absent from the file itself
    public = load_public_context(key_dir / "public.ctx")
    secret = load_secret_context(key_dir / "secret.ctx")
    assert not public.is_private() and not public.has_secret_key()
    assert not public.has_relin_keys() and not public.has_galois_keys()
    assert secret.is_private()

    values = {"w": np.linspace(-1, 1, 50, dtype=np.float32)}
    payload = encrypt_arrays(secret, values, 1.0, "compact")
    vec = ts.ckks_vector_from(public, payload.chunks[0])
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    with pytest.raises(ValueError, match="secret"):
        decrypt_payload(public, payload)
    np.testing.assert_allclose(decrypt_payload(secret, payload)["w"], values["w"], atol=1e-4)


def test_server_context_is_smaller_than_clients(key_dir: Path) -> None:
    assert (key_dir / "public.ctx").stat().st_size < (key_dir / "secret.ctx").stat().st_size


def test_wrong_kind_of_context_is_refused(key_dir: Path) -> None:
    with pytest.raises(KeyMaterialError, match="secret key"):
        load_public_context(key_dir / "secret.ctx")
    with pytest.raises(KeyMaterialError, match="public"):
        load_secret_context(key_dir / "public.ctx")


@posix_only
def test_group_readable_files_are_refused(key_dir: Path, tmp_path: Path) -> None:
    for name, loader in (("secret.ctx", load_secret_context), ("public.ctx", load_public_context)):
        target = tmp_path / name
        shutil.copyfile(key_dir / name, target)
        target.chmod(0o644)
        with pytest.raises(KeyMaterialError, match="refusing"):
            loader(target)
        target.chmod(0o600)
        assert loader(target) is not None


def test_missing_or_foreign_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="missing"):
        load_secret_context(tmp_path / "secret.ctx")
    junk = tmp_path / "public.ctx"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a context at all")
    os.close(fd)
    with pytest.raises(KeyMaterialError, match="not a TenSEAL context"):
        load_public_context(junk)


def test_file_swapped_behind_manifest_is_refused(key_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "keys"
    shutil.copytree(key_dir, copy)
    _, other_public = generate_contexts("compact")
    (copy / "public.ctx").write_bytes(other_public)
    with pytest.raises(KeyMaterialError, match="sha256"):
        load_public_context(copy)


def test_write_keys_does_not_overwrite_by_default(key_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "keys"
    shutil.copytree(key_dir, copy)
    with pytest.raises(KeyMaterialError, match="overwrite"):
        write_keys(copy, "compact")
    write_keys(copy, "compact", overwrite=True)
    assert read_manifest(copy)["key_fingerprint"] != read_manifest(key_dir)["key_fingerprint"]
    if os.name == "posix":
        assert _mode(copy / "secret.ctx") == 0o600


def test_fingerprint_identifies_the_key_set() -> None:
    secret_a, public_a = (ts.context_from(b) for b in generate_contexts("compact"))
    _, public_b = (ts.context_from(b) for b in generate_contexts("compact"))
    assert key_fingerprint(secret_a) == key_fingerprint(public_a)
    assert key_fingerprint(public_a) != key_fingerprint(public_b)


def test_profiles_and_their_validation() -> None:
    assert get_profile("compact").slots == 2048
    assert get_profile("conservative").slots == 4096
    assert get_profile("conservative").coeff_mod_bit_sizes == (60, 40, 40)
    assert all(p.security_bits == 128 for p in PROFILES.values())
    with pytest.raises(ValueError, match="compact"):
        get_profile("tiny")
    with pytest.raises(ValueError, match="security limit"):
        HEProfile("weak", 4096, (60, 60), 30, 1.0)
    with pytest.raises(ValueError, match="data bits"):
        HEProfile("overflow", 4096, (32, 32), 30, 4.0)
    with pytest.raises(ValueError, match="unknown HE profile"):
        write_keys(Path("/nonexistent/never-created"), "nope")
