"""Sealed files: models at rest, readable only by the same TEE identity.

File layout (one file per model, and one manifest)::

    magic        8   b"BAISEAL1"
    header_len   4   little-endian
    header       JSON: kind, model_id, metadata, wrapped data key and nonces
    ciphertext   AES-256-GCM(data_key, data_nonce, plaintext, aad = magic || header)

The data key is random per file and wrapped with AES-256-GCM under the sealing key
(HKDF-SHA256 of the TEE's key, e.g. Gramine's ``_sgx_mrenclave``), with the model id as
associated data. So the header is authenticated (a changed byte breaks the tag), a
file sealed by another TEE identity does not unwrap, and a file renamed to another id
does not unwrap either. Writes go to a temporary file, are fsynced, renamed, and the
folder is fsynced: a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import struct
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import BlindAIError

__all__ = [
    "MAGIC",
    "NoSealingKeyError",
    "SealedDirectory",
    "SealedFileError",
    "SealingKey",
    "atomic_write",
    "seal",
    "sealing_key_for",
    "unseal",
]

MAGIC = b"BAISEAL1"
MAX_HEADER = 1 << 20
_INFO = b"blindai/sealing/v1"


class SealedFileError(BlindAIError):
    """A sealed file is truncated, tampered with, or sealed by another TEE identity."""


class SealingKey:
    """The TEE's sealing key, stretched to 256 bits; never written, never logged."""

    def __init__(self, tee_key: bytes, *, source: str) -> None:
        if len(tee_key) < 16:
            raise ValueError("a sealing key needs at least 128 bits")
        self.source = source
        self._aead = AESGCM(HKDF(hashes.SHA256(), 32, salt=None, info=_INFO).derive(tee_key))

    def __repr__(self) -> str:
        return f"SealingKey(source={self.source!r})"

    def wrap(self, data_key: bytes, ident: str) -> tuple[bytes, bytes]:
        nonce = secrets.token_bytes(12)
        return nonce, self._aead.encrypt(nonce, data_key, b"wrap:" + ident.encode())

    def unwrap(self, nonce: bytes, wrapped: bytes, ident: str) -> bytes:
        try:
            return self._aead.decrypt(nonce, wrapped, b"wrap:" + ident.encode())
        except InvalidTag:
            raise SealedFileError("the data key does not unwrap: sealed by another TEE identity, or tampered") from None


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def seal(key: SealingKey, ident: str, metadata: dict[str, Any], plaintext: bytes) -> bytes:
    data_key = AESGCM.generate_key(256)
    wrap_nonce, wrapped = key.wrap(data_key, ident)
    data_nonce = secrets.token_bytes(12)
    header = json.dumps(
        {
            "id": ident,
            "meta": metadata,
            "wrap_nonce": _b64(wrap_nonce),
            "wrapped_key": _b64(wrapped),
            "data_nonce": _b64(data_nonce),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    aad = MAGIC + struct.pack("<I", len(header)) + header
    return aad + AESGCM(data_key).encrypt(data_nonce, plaintext, aad)


def unseal(key: SealingKey, blob: bytes, expected_id: str | None = None) -> tuple[str, dict[str, Any], bytes]:
    """Returns (id, metadata, plaintext), or raises SealedFileError saying what is wrong."""
    if len(blob) < 12 or blob[:8] != MAGIC:
        raise SealedFileError("not a BlindAI sealed file (bad magic)")
    (hlen,) = struct.unpack_from("<I", blob, 8)
    if hlen > MAX_HEADER or 12 + hlen > len(blob):
        raise SealedFileError("sealed file truncated in its header")
    raw = blob[12 : 12 + hlen]
    try:
        header = json.loads(raw)
        ident = str(header["id"])
        meta = dict(header["meta"])
        wrap_nonce = base64.b64decode(header["wrap_nonce"])
        wrapped = base64.b64decode(header["wrapped_key"])
        data_nonce = base64.b64decode(header["data_nonce"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SealedFileError("sealed file header is malformed") from exc
    if expected_id is not None and ident != expected_id:
        raise SealedFileError(f"sealed file holds {ident!r}, not {expected_id!r}")
    data_key = key.unwrap(wrap_nonce, wrapped, ident)
    try:
        plaintext = AESGCM(data_key).decrypt(data_nonce, blob[12 + hlen :], blob[: 12 + hlen])
    except InvalidTag:
        raise SealedFileError("sealed file is truncated or tampered with (authentication failed)") from None
    return ident, meta, plaintext


def atomic_write(path: Path, data: bytes) -> None:
    """Temporary file, fsync, rename, fsync the folder: after a crash the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ sealing keys


class NoSealingKeyError(BlindAIError):
    """The TEE offers no sealing key, so models cannot be stored on disk safely."""


SIMULATION_KEY_NAME = ".simulation-sealing-key"


def sealing_key_for(tee: str, tee_key: bytes | None, store_dir: Path, key_file: Path | None = None) -> SealingKey:
    """SGX: the TEE's key (Gramine ``_sgx_mrenclave``). Simulation: a key FILE on the host, which
    protects nothing against the host, made 0600 on first use. Other TEEs: refused."""
    if tee == "simulation":
        path = key_file or store_dir / SIMULATION_KEY_NAME
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            data = path.read_bytes()
        else:
            data = secrets.token_bytes(32)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fsync(f.fileno())
        return SealingKey(data, source=f"INSECURE simulation key file {path}")
    if tee_key is None:
        raise NoSealingKeyError(
            f"--model-store needs a sealing key bound to the TEE, and this {tee} TEE offers none "
            "(configfs-tsm has no sealing interface): stored models would be readable by the host. "
            "Run without --model-store (models stay in TEE memory), or use SGX (Gramine)"
        )
    return SealingKey(tee_key, source=f"{tee} TEE sealing key")


class SealedDirectory:
    """Models sealed one per file, plus a sealed manifest of which ones are live.

    The manifest is written after a model file and before a delete removes one, so a
    crash never makes an acknowledged model disappear, and a model file restored by the
    host after its owner deleted it is not loaded (unless the manifest is rolled back
    too, which sealing alone cannot detect: see docs/models.md).
    """

    MANIFEST = "manifest.sealed"

    def __init__(self, folder: Path, key: SealingKey) -> None:
        self.folder = folder
        self.key = key
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._live: dict[str, str] = {}

    def _path(self, model_id: str) -> Path:
        if not model_id.isalnum():
            raise ValueError("model ids are alphanumeric")
        return self.folder / f"{model_id}.model.sealed"

    def _write_manifest(self) -> None:
        atomic_write(self.folder / self.MANIFEST, seal(self.key, "manifest", {"models": dict(self._live)}, b""))

    def load(self, log: Any) -> list[tuple[str, dict[str, Any], bytes]]:
        """Every live model that unseals; anything else is logged and skipped, never fatal."""
        for tmp in self.folder.glob(".*.tmp"):
            log.warning("removing an unfinished write from a previous run: %s", tmp.name)
            with contextlib.suppress(OSError):
                tmp.unlink()
        listed: dict[str, str] | None = None
        manifest = self.folder / self.MANIFEST
        if manifest.exists():
            try:
                _, meta, _ = unseal(self.key, manifest.read_bytes(), "manifest")
                listed = {str(k): str(v) for k, v in dict(meta["models"]).items()}
            except (SealedFileError, OSError, KeyError, TypeError) as exc:
                log.error("model store manifest skipped (%s); loading every model file that unseals", exc)
        out = []
        for path in sorted(self.folder.glob("*.model.sealed")):
            model_id = path.name.split(".", 1)[0]
            if listed is not None and model_id not in listed:
                log.warning(
                    "model file %s is not in the manifest (deleted, or an unfinished upload): removed", path.name
                )
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            try:
                _, meta, data = unseal(self.key, path.read_bytes(), model_id)
            except (SealedFileError, OSError) as exc:
                log.error("sealed model file %s skipped: %s", path.name, exc)
                continue
            if listed is not None and listed[model_id] != meta.get("sha256"):
                log.error("sealed model file %s skipped: it is not the version the manifest lists", path.name)
                continue
            out.append((model_id, meta, data))
            self._live[model_id] = str(meta.get("sha256"))
        if listed is not None and set(listed) - set(self._live):
            log.error("models listed but missing or unreadable: %s", sorted(set(listed) - set(self._live)))
        try:
            self._write_manifest()
        except OSError as exc:
            # A manifest that cannot be replaced (e.g. something else sits at its path) is moved
            # aside once; if the store stays unwritable, the server still serves what it loaded.
            broken = manifest.with_name(f"{self.MANIFEST}.broken-{secrets.token_hex(4)}")
            log.error("cannot write the manifest (%s); moving %s aside to %s", exc.strerror, manifest.name, broken.name)
            try:
                manifest.rename(broken)
                self._write_manifest()
            except OSError as again:
                log.error("the model store is not writable (%s): new uploads will be refused", again.strerror)
        return out

    def save(self, model_id: str, meta: dict[str, Any], data: bytes) -> None:
        atomic_write(self._path(model_id), seal(self.key, model_id, meta, data))
        self._live[model_id] = str(meta["sha256"])
        self._write_manifest()

    def delete(self, model_id: str) -> None:
        self._live.pop(model_id, None)
        self._write_manifest()
        with contextlib.suppress(FileNotFoundError):
            self._path(model_id).unlink()
        fsync_dir(self.folder)
