"""Sealed files: models at rest, readable only by the same TEE identity.

File layout (one file per model, and one manifest), format 2::

    magic        8   b"BAISEAL2"
    header_len   4   little-endian
    header       JSON: id, metadata, wrapped data key, nonce prefix (7 bytes), chunk size
    chunks       AES-256-GCM(data_key, prefix || index (4, big-endian) || final (1), chunk,
                 aad = magic || header_len || header), each chunk `chunk` plaintext bytes
                 but the last (0..chunk bytes, the only one with final = 1)

A model is sealed and unsealed one chunk at a time (STREAM-style: the nonce carries the
chunk's index and whether it is the last, so a reordered, repeated, dropped or cut chunk
fails authentication), so neither direction holds a second copy of the model. Format 1
(``b"BAISEAL1"``: the whole body one AES-GCM message under a data nonce) is still read.

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
import errno
import json
import os
import secrets
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._files import atomic_write, fsync_dir
from ..tees import TEES
from .errors import CoreError

__all__ = [
    "MAGIC",
    "StoreError",
    "check_store",
    "recover_store",
    "NoSealingKeyError",
    "SealedDirectory",
    "SealedFileError",
    "SealingKey",
    "atomic_write",
    "seal",
    "seal_to",
    "sealing_key_for",
    "unseal",
    "unseal_file",
]

MAGIC = b"BAISEAL1"  # format 1: the body is one AES-GCM message (still read)
MAGIC2 = b"BAISEAL2"  # format 2: the body is a sequence of AES-GCM chunks (written)
MAX_HEADER = 1 << 20
CHUNK = 4 << 20  # plaintext bytes per chunk (format 2): what a reader holds at once
MIN_CHUNK, MAX_CHUNK = 4 << 10, 64 << 20  # a header asking for more is refused before reading
_PREFIX = 7  # bytes of random nonce prefix; with a 4-byte index and a final flag: 12
_TAG = 16
_INFO = b"blindai/sealing/v1"


class SealedFileError(CoreError):
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
            key = self._aead.decrypt(nonce, wrapped, b"wrap:" + ident.encode())
        except InvalidTag:
            raise SealedFileError("the data key does not unwrap: sealed by another TEE identity, or tampered") from None
        except (ValueError, TypeError, OverflowError, UnicodeError) as exc:  # e.g. a nonce of 3 bytes
            raise SealedFileError(f"sealed file header is malformed ({exc})") from None
        if len(key) != 32:
            raise SealedFileError("the data key has the wrong length")
        return key


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def seal(key: SealingKey, ident: str, metadata: dict[str, Any], plaintext: bytes | memoryview) -> bytes:
    """A whole sealed file in memory (the manifest, the store commands); models use `seal_to`."""
    parts: list[bytes] = []
    seal_to(parts.append, key, ident, metadata, plaintext)
    return b"".join(parts)


def seal_to(
    write: Callable[[bytes], object],
    key: SealingKey,
    ident: str,
    metadata: dict[str, Any],
    plaintext: bytes | memoryview,
    chunk: int = CHUNK,
) -> None:
    """Seal ``plaintext`` (format 2), handing the file to ``write`` piece by piece: the header, then
    one encrypted chunk at a time, so sealing a model holds one chunk more than the model."""
    data_key = AESGCM.generate_key(256)
    wrap_nonce, wrapped = key.wrap(data_key, ident)
    prefix = secrets.token_bytes(_PREFIX)
    header = json.dumps(
        {
            "id": ident,
            "meta": metadata,
            "wrap_nonce": _b64(wrap_nonce),
            "wrapped_key": _b64(wrapped),
            "nonce_prefix": _b64(prefix),
            "chunk": chunk,
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    if len(header) > MAX_HEADER:  # unseal refuses it: never write what this store cannot read back
        raise StoreError(
            f"the sealed header of {ident!r} would be {len(header)} bytes, above the {MAX_HEADER} a store reads back"
            + (" (the manifest lists too many models: fewer --max-models)" if ident == "manifest" else "")
        )
    aad = MAGIC2 + struct.pack("<I", len(header)) + header
    write(aad)
    aead = AESGCM(data_key)
    with memoryview(plaintext).cast("B") as view:  # released even when a write fails (a full disk)
        count = max(1, -(-len(view) // chunk))
        for i in range(count):
            piece = view[i * chunk : (i + 1) * chunk]
            try:
                sealed = aead.encrypt(_chunk_nonce(prefix, i, i == count - 1), piece, aad)
            finally:
                piece.release()
            write(sealed)


def _chunk_nonce(prefix: bytes, index: int, final: bool) -> bytes:
    """STREAM-style nonce: a per-file random prefix, the chunk's index, and whether it is the last,
    so chunks cannot be reordered, dropped, repeated, or the file cut at a chunk boundary."""
    return prefix + struct.pack(">IB", index, 1 if final else 0)


@dataclass(frozen=True, slots=True)
class _Opened:
    ident: str
    meta: dict[str, Any]
    data_key: bytes
    aead: AESGCM
    aad: bytes
    version: int  # 1: one AES-GCM message; 2: chunks
    nonce: bytes  # v1: the data nonce; v2: the chunk nonce prefix
    chunk: int


def _open_header(key: SealingKey, head: bytes, total: int, expected_id: str | None) -> _Opened:
    """Parse and check a sealed file's header (``head`` holds at least its first 12 + header bytes,
    ``total`` is the file's size); the header itself is authenticated later, by the first tag."""
    if len(head) < 12 or head[:8] not in (MAGIC, MAGIC2):
        raise SealedFileError("not a BlindAI sealed file (bad magic)")
    (hlen,) = struct.unpack_from("<I", head, 8)
    if hlen > MAX_HEADER or 12 + hlen > min(len(head), total):
        raise SealedFileError("sealed file truncated in its header")
    v2 = head[:8] == MAGIC2
    try:
        header = json.loads(head[12 : 12 + hlen])
        if not isinstance(header, dict):
            raise TypeError("the header is not an object")
        ident = str(header["id"])
        meta = dict(header["meta"])
        wrap_nonce = base64.b64decode(header["wrap_nonce"])
        wrapped = base64.b64decode(header["wrapped_key"])
        nonce = base64.b64decode(header["nonce_prefix" if v2 else "data_nonce"])
        chunk = header["chunk"] if v2 else 0
        if v2 and (len(nonce) != _PREFIX or type(chunk) is not int or not MIN_CHUNK <= chunk <= MAX_CHUNK):
            raise ValueError("bad nonce prefix or chunk size")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SealedFileError("sealed file header is malformed") from exc
    if expected_id is not None and ident != expected_id:
        raise SealedFileError(f"sealed file holds {ident!r}, not {expected_id!r}")
    data_key = key.unwrap(wrap_nonce, wrapped, ident)
    if not v2 and not 8 <= len(nonce) <= 128:
        raise SealedFileError("sealed file header is malformed (data nonce length)")
    return _Opened(ident, meta, data_key, AESGCM(data_key), bytes(head[: 12 + hlen]), 2 if v2 else 1, nonce, chunk)


def _chunk_sizes(body: int, chunk: int) -> list[int]:
    """The sealed sizes of a format-2 body's chunks: all full but the last, which holds 0..chunk bytes."""
    full = chunk + _TAG
    count = max(1, -(-body // full))
    last = body - (count - 1) * full
    if body < _TAG or last < _TAG:
        raise SealedFileError("sealed file is truncated or tampered with (a chunk is cut short)")
    return [full] * (count - 1) + [last]


def _decrypt(opened: _Opened, index: int, final: bool, data: bytes | memoryview) -> bytes:
    """One format-2 chunk, authenticated."""
    try:
        return opened.aead.decrypt(_chunk_nonce(opened.nonce, index, final), data, opened.aad)
    except InvalidTag:
        raise SealedFileError("sealed file is truncated or tampered with (authentication failed)") from None
    except (ValueError, TypeError, OverflowError) as exc:  # an authenticated header cannot get here; fail closed
        raise SealedFileError(f"sealed file header is malformed ({exc})") from None


def unseal(key: SealingKey, blob: bytes, expected_id: str | None = None) -> tuple[str, dict[str, Any], bytes]:
    """Returns (id, metadata, plaintext) of a whole file (format 1 or 2), or raises SealedFileError."""
    parts: list[bytes] = []
    view = memoryview(blob)
    ident, meta = _unseal(key, lambda n, at: view[at : at + n], len(blob), expected_id, parts.append)
    return ident, meta, b"".join(parts)


def unseal_file(
    key: SealingKey,
    path: Path,
    expected_id: str | None,
    sink: Callable[[bytes], object],
    limit: int = 0,
    *,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Decrypt a sealed file into ``sink`` at most `CHUNK` bytes at a time, either format.

    Format 2 hands the sink each chunk once its tag has passed, format 1 only once the whole
    file has (a first pass authenticates, a second decrypts): on a SealedFileError the caller
    discards what it received, which is never forged bytes. ``check`` sees the metadata as the
    header claims it, before any of the body is read (it may only refuse: nothing is
    authenticated yet). Same guards as `read_regular` (a regular file, at most ``limit`` bytes,
    an open that never blocks). Memory stays at one chunk whatever the file says, so a host that
    rewrites a file as format 1 (one message, authenticated only at its end) gains nothing by it
    but one read of the file, bounded by ``limit``.
    """
    fd = _open_regular(path, limit or MAX_FILE)
    try:
        return _unseal(key, lambda n, at: os.pread(fd, n, at), os.fstat(fd).st_size, expected_id, sink, check)
    finally:
        os.close(fd)


def _unseal(
    key: SealingKey,
    pread: Callable[[int, int], bytes | memoryview],
    total: int,
    expected_id: str | None,
    sink: Callable[[bytes], object],
    check: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Both formats over ``pread(size, offset)`` of a file or a blob of ``total`` bytes."""
    opened = _open_header(key, bytes(pread(12 + MAX_HEADER, 0)), total, expected_id)
    if check is not None:
        check(opened.meta)
    body = total - len(opened.aad)

    def piece(size: int, at: int) -> bytes | memoryview:
        data = pread(size, at)
        if len(data) != size:
            raise SealedFileError("sealed file is truncated or tampered with (it changed while read)")
        return data

    if opened.version == 2:
        sizes = _chunk_sizes(body, opened.chunk)
        at = len(opened.aad)
        for i, size in enumerate(sizes):
            sink(_decrypt(opened, i, i == len(sizes) - 1, piece(size, at)))
            at += size
        return opened.ident, opened.meta
    # Format 1: one AES-GCM message whose tag (the last 16 bytes) covers it all. Authenticated in a
    # first pass that keeps nothing, then decrypted into the sink: the sink (a model's in-memory
    # file) never holds bytes a host forged, whatever the file's size.
    if body < _TAG:
        raise SealedFileError("sealed file is truncated or tampered with (authentication failed)")
    tag = bytes(piece(_TAG, total - _TAG))
    for keep in (False, True):
        try:
            decryptor = Cipher(algorithms.AES(opened.data_key), modes.GCM(opened.nonce, tag)).decryptor()
        except ValueError as exc:
            raise SealedFileError(f"sealed file header is malformed ({exc})") from None
        decryptor.authenticate_additional_data(opened.aad)
        at, left = len(opened.aad), body - _TAG
        while left:
            n = min(left, CHUNK)
            plain = decryptor.update(piece(n, at))
            if keep:
                sink(plain)
            at, left = at + n, left - n
        try:
            decryptor.finalize()
        except InvalidTag:
            raise SealedFileError("sealed file is truncated or tampered with (authentication failed)") from None
    return opened.ident, opened.meta


# The largest sealed file read at start unless the store says otherwise (a 2 GiB model, its header).
MAX_FILE = (2 << 30) + MAX_HEADER + 4096


def read_regular(path: Path, limit: int = MAX_FILE) -> bytes:
    """A sealed file's bytes: a regular file only, at most ``limit`` bytes, never a blocking open.

    A host may put a FIFO (an open that waits for a writer forever), a device or a 100 GiB sparse
    file where a model file was: O_NONBLOCK makes the open return, fstat refuses what is not a
    regular file, and the size is checked before anything is read.
    """
    fd = _open_regular(path, limit)
    try:
        return _read_all(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _open_regular(path: Path, limit: int) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):  # what reading it would say: a read error, retried later
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            raise SealedFileError(f"{path.name} is not a regular file")
        if st.st_size > limit:
            raise SealedFileError(f"{path.name} holds {st.st_size} bytes, more than a sealed model may ({limit})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_all(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def header_of(path: Path) -> dict[str, Any] | None:
    """A sealed file's header, unauthenticated (the tag covers it with the body): for refusing, never trusting."""
    try:
        head = read_regular_prefix(path, 12 + MAX_HEADER)
        if len(head) < 12 or head[:8] not in (MAGIC, MAGIC2):
            return None
        (hlen,) = struct.unpack_from("<I", head, 8)
        header = json.loads(head[12 : 12 + hlen])
    except (OSError, SealedFileError, ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def read_regular_prefix(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of a regular file (same guards as read_regular)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SealedFileError(f"{path.name} is not a regular file")
        return os.read(fd, size)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ sealing keys


class NoSealingKeyError(CoreError):
    """The TEE offers no sealing key, so models cannot be stored on disk safely."""


SIMULATION_KEY_NAME = ".simulation-sealing-key"


def sealing_key_for(
    tee: str, tee_key: bytes | None, store_dir: Path, key_file: Path | None = None, *, create: bool = True
) -> SealingKey:
    """By the TEE's ``sealing`` row (tees.py): ``tee-key`` (SGX: Gramine's ``_sgx_mrenclave``),
    ``host-key-file`` (simulation: a key FILE on the host, which protects nothing against the
    host, made 0600 on first use), ``none`` (refused)."""
    how = TEES[tee].sealing if tee in TEES else "none"
    if how == "host-key-file":
        path = key_file or store_dir / SIMULATION_KEY_NAME
        if not create:  # the offline store commands read the key, never make one
            return SealingKey(path.read_bytes(), source=f"INSECURE simulation key file {path}")
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
    if how != "tee-key" or tee_key is None:
        raise NoSealingKeyError(
            f"--model-store needs a sealing key bound to the TEE, and this {tee} TEE offers none "
            "(configfs-tsm has no sealing interface): stored models would be readable by the host. "
            "Run without --model-store (models stay in TEE memory), or use SGX (Gramine)"
        )
    return SealingKey(tee_key, source=f"{tee} TEE sealing key")


class StoreError(CoreError):
    """The sealed store is not in a state the server may start from; the message says how to recover."""


MANIFEST = "manifest.sealed"
MODEL_SUFFIX = ".model.sealed"
# Every unfinished write is a hidden temporary file of this pattern, nothing else:
# `.NAME.RANDOM.tmp` (atomic_write) and `.ID.model.sealed.vVERSION.pending.tmp` (a model
# written, not yet listed: promoted at start only if the manifest lists that version).
TEMP_GLOB = ".*.tmp"
_PENDING = ".pending.tmp"


@dataclass(slots=True)
class Listing:
    """A manifest entry: the content hash and the version (store generation) of one model file."""

    sha256: str
    version: int | None  # None: listed by a manifest of the first format, which had no versions
    # SHA-256 of the owner token, so that the owner can delete a listed model whose file does not
    # read (no file, no metadata); None in manifests written before it was kept here.
    owner: str | None = None


@dataclass(slots=True)
class Manifest:
    store_id: str
    generation: int
    models: dict[str, Listing]

    def seal(self, key: SealingKey) -> bytes:
        meta = {
            "format": 2,
            "store_id": self.store_id,
            "generation": self.generation,
            "models": {
                k: {"sha256": v.sha256, "version": v.version, **({"owner": v.owner} if v.owner else {})}
                for k, v in sorted(self.models.items())
            },
        }
        return seal(key, "manifest", meta, b"")

    @classmethod
    def unseal(cls, key: SealingKey, blob: bytes) -> Manifest:
        _, meta, _ = unseal(key, blob, "manifest")
        try:
            models: dict[str, Listing] = {}
            for k, v in dict(meta["models"]).items():
                if isinstance(v, str):  # first format: id -> sha256
                    models[str(k)] = Listing(v, None)
                else:
                    version, owner = v.get("version"), v.get("owner")
                    models[str(k)] = Listing(
                        str(v["sha256"]), int(version) if version is not None else None, str(owner) if owner else None
                    )
            return cls(str(meta.get("store_id") or ""), int(meta.get("generation") or 0), models)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SealedFileError(f"the manifest's contents are malformed ({exc})") from None


@dataclass(slots=True)
class Unavailable:
    """A listed model that did not load: kept listed, its file untouched, retried later."""

    model_id: str
    reason: str


def model_path(folder: Path, model_id: str) -> Path:
    if not model_id.isalnum():
        raise ValueError("model ids are alphanumeric")
    return folder / f"{model_id}{MODEL_SUFFIX}"


def model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{MODEL_SUFFIX}") if not p.name.startswith("."))


def recovery_hint(folder: Path) -> str:
    return (
        f"inspect with `blindai store check {folder}`, then `blindai store recover {folder}` (moves unlisted "
        f"files aside; `--adopt ID` or `--adopt-all` lists chosen ones again)"
    )


class SealedDirectory:
    """Models sealed one per file, plus a sealed manifest that is the only truth of what is live.

    Fail closed: without a manifest that unseals, model files are never loaded (the start is
    refused, naming them and the recovery commands). The manifest carries the store's id and
    generation, and for each model its content hash and version; a model file carries the
    store id and its version, so a file from another store or another time (an older version
    restored by the host) does not load. A listed model that cannot be read or does not match
    stays listed, its file untouched, and is retried later: nothing at start ever deletes a
    model. Only a whole-folder rollback (manifest and files together) goes unnoticed, which
    sealing cannot detect without a monotonic counter (docs/models.md).
    """

    MANIFEST = MANIFEST

    def __init__(self, folder: Path, key: SealingKey) -> None:
        self.folder = folder
        self.key = key
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.manifest = Manifest(secrets.token_hex(16), 0, {})
        self._opened = False  # writes before open() would replace a manifest never read: refused
        self.max_file = MAX_FILE  # the store sets it from --max-model-bytes

    def _path(self, model_id: str) -> Path:
        return model_path(self.folder, model_id)

    def _pending(self, model_id: str, version: int) -> Path:
        return self.folder / f".{model_id}{MODEL_SUFFIX}.v{version}{_PENDING}"

    def _write_manifest(self, manifest: Manifest) -> None:
        atomic_write(self.folder / MANIFEST, manifest.seal(self.key))

    def open(self, log: Any) -> list[str]:
        """At start: read the manifest (or refuse), finish or drop unfinished writes; returns the listed ids."""
        manifest_path = self.folder / MANIFEST
        files = model_files(self.folder)
        if not manifest_path.exists() and not manifest_path.is_symlink():
            if files:
                raise StoreError(
                    f"the model store {self.folder} has model files but no manifest ({MANIFEST}): "
                    f"{', '.join(p.name for p in files)}. Refusing to start rather than load files nobody listed "
                    f"(deleted or older models would come back); {recovery_hint(self.folder)}"
                )
            self._drop_temporaries(log, {})
            self._write_manifest(self.manifest)  # a new store
            self._opened = True
            log.info("new model store %s (id %s)", self.folder, self.manifest.store_id)
            return []
        try:
            self.manifest = Manifest.unseal(self.key, read_regular(manifest_path, MAX_HEADER + 4096))
        except (SealedFileError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StoreError(
                f"the model store manifest {manifest_path} cannot be used ({reason}); refusing to start rather "
                f"than guess which model files are live ({len(files)} model file(s) there); "
                f"{recovery_hint(self.folder)}"
            ) from None
        self._refuse_foreign_files(files)
        self._drop_temporaries(log, self.manifest.models)
        self._opened = True
        for path in model_files(self.folder):
            model_id = path.name.split(".", 1)[0]
            if model_id not in self.manifest.models:
                log.warning(
                    "model file %s is not in the manifest (a deleted model, or put there by the host): not loaded, "
                    "left in place; %s",
                    path.name,
                    recovery_hint(self.folder),
                )
        return sorted(self.manifest.models)

    def _refuse_foreign_files(self, files: list[Path]) -> None:
        """Unlisted model files of another store than the manifest's: a manifest swapped in by the host
        (another store's, sealed with the same key) would otherwise start silently with none of this
        folder's models. Refused, naming the files; `blindai store recover` moves them aside or adopts them."""
        if not self.manifest.store_id:
            return  # a manifest of the first format has no store id to compare
        foreign = []
        for path in files:
            if path.name.split(".", 1)[0] in self.manifest.models:
                continue  # a listed file of another store does not load (read() says why); recover keeps listings
            header = header_of(path)
            meta = header.get("meta") if header else None
            store_id = meta.get("store_id") if isinstance(meta, dict) else None
            if store_id is not None and store_id != self.manifest.store_id:
                foreign.append(path.name)
        if foreign:
            raise StoreError(
                f"the model store {self.folder} has model files of another model store than its manifest "
                f"({self.manifest.store_id}): {', '.join(foreign)}. The manifest may have been replaced; refusing "
                f"to start rather than serve another store's state; {recovery_hint(self.folder)}"
            )

    def _pending_ok(self, tmp: Path, model_id: str, entry: Listing) -> str | None:
        """Why a pending file is not the listed version of its model (None when it is)."""
        try:  # authenticated chunk by chunk, nothing kept: a sparse planted file costs no memory
            ident, meta = unseal_file(self.key, tmp, model_id, lambda _chunk: None, self.max_file)
        except (SealedFileError, OSError) as exc:
            return str(exc)
        except Exception as exc:  # any malformed file is refused, never a failed start
            return f"malformed ({type(exc).__name__})"
        if ident != model_id or meta.get("version") != entry.version or meta.get("sha256") != entry.sha256:
            return "its id, version or hash differ from the listing"
        if self.manifest.store_id and meta.get("store_id") not in (None, self.manifest.store_id):
            return "it belongs to another model store"
        return None

    def _drop_temporaries(self, log: Any, listed: dict[str, Listing]) -> None:
        for tmp in sorted(self.folder.glob(TEMP_GLOB)):
            name = tmp.name
            if name.endswith(_PENDING):
                model_id, _, rest = name[1:].partition(".")
                version = rest.removeprefix(MODEL_SUFFIX[1:] + ".v").removesuffix(_PENDING)
                entry = listed.get(model_id)
                if entry is not None and entry.version is not None and version == str(entry.version):
                    # Listed, then the server stopped before the rename: finish the write, but only
                    # with a file that is that version (a planted one must not replace the model).
                    why = self._pending_ok(tmp, model_id, entry) if model_id.isalnum() else "bad name"
                    if why is None:
                        log.warning("finishing the write of model %s (version %s)", model_id, version)
                        with contextlib.suppress(OSError):
                            os.replace(tmp, self._path(model_id))
                            fsync_dir(self.folder)
                    else:
                        aside = self.folder / f"rejected-{_stamp()}"
                        log.error(
                            "pending file %s is not the listed version of model %s (%s): moved to %s/, "
                            "the model file is left as it is",
                            name, model_id, why, aside.name,
                        )  # fmt: skip
                        with contextlib.suppress(OSError):
                            aside.mkdir(mode=0o700, exist_ok=True)
                            os.replace(tmp, aside / name)
                            fsync_dir(self.folder)
                    continue
            log.warning("removing an unfinished write from a previous run: %s", name)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def read(self, model_id: str, sink: Callable[[bytes], object]) -> dict[str, Any]:
        """One listed model into ``sink``, checked against the manifest; returns its metadata.

        Raises OSError or SealedFileError; the sink may then hold part of the file: discard it.
        """
        entry = self.manifest.models.get(model_id)
        if entry is None:
            raise SealedFileError(f"model {model_id} is not in the manifest")

        def listed(meta: dict[str, Any]) -> None:
            store_id = meta.get("store_id")
            if self.manifest.store_id and store_id is not None and store_id != self.manifest.store_id:
                raise SealedFileError("the file belongs to another model store")
            version = meta.get("version")
            if entry.version is not None and version != entry.version:
                raise SealedFileError(
                    f"the file holds version {version!r}, the manifest lists version {entry.version} "
                    "(a file from another time: not loaded)"
                )
            if meta.get("sha256") != entry.sha256:
                raise SealedFileError("the file is not the version the manifest lists (content hash differs)")

        try:
            # Checked on the header before the body is read (a rolled-back file costs no decryption),
            # and again once the tags have authenticated it.
            _, meta = unseal_file(self.key, self._path(model_id), model_id, sink, self.max_file, check=listed)
        except (SealedFileError, OSError):
            raise
        except Exception as exc:  # any malformed file is a skipped file, never a failed start
            raise SealedFileError(f"sealed file is malformed ({type(exc).__name__})") from None
        listed(meta)
        return meta

    def save(self, model_id: str, meta: dict[str, Any], data: bytes | memoryview) -> None:
        """Pending file, then the manifest listing it, then the rename: a crash leaves the old state or the new."""
        if not self._opened:
            raise StoreError("the sealed store was not opened (SealedDirectory.open) before a write")
        version = self.manifest.generation + 1
        meta = {**meta, "store_id": self.manifest.store_id, "version": version}
        pending = self._pending(model_id, version)
        final = self._path(model_id)
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                seal_to(f.write, self.key, model_id, meta, data)
                f.flush()
                os.fsync(f.fileno())
            owner = meta.get("owner_token_hash")
            listing = Listing(str(meta["sha256"]), version, str(owner) if owner else None)
            models = {**self.manifest.models, model_id: listing}
            self._write_manifest(Manifest(self.manifest.store_id, version, models))
        except BaseException:
            with contextlib.suppress(OSError):
                pending.unlink()
            raise
        self.manifest = Manifest(self.manifest.store_id, version, models)
        os.replace(pending, final)
        fsync_dir(self.folder)

    def delete(self, model_id: str) -> None:
        """Unlisted first, then the file: a crash in between leaves an unlisted file, never a listed hole."""
        if not self._opened:
            raise StoreError("the sealed store was not opened (SealedDirectory.open) before a write")
        models = {k: v for k, v in self.manifest.models.items() if k != model_id}
        manifest = Manifest(self.manifest.store_id, self.manifest.generation + 1, models)
        self._write_manifest(manifest)
        self.manifest = manifest
        # Unlisted, the model is deleted; a file that cannot be removed (gone, unreadable disk, not
        # a file) is an unlisted file: reported at start, moved aside by `blindai store recover`.
        with contextlib.suppress(OSError):
            self._path(model_id).unlink()
        fsync_dir(self.folder)


# ------------------------------------------------------------------ blindai store check|recover


@dataclass(slots=True)
class StoreReport:
    manifest: str  # "ok", "missing", or why it cannot be used
    listed_ok: list[str] = field(default_factory=list)
    listed_bad: dict[str, str] = field(default_factory=dict)  # id -> why it would not load
    unlisted: dict[str, str] = field(default_factory=dict)  # file name -> what it holds
    temporaries: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.manifest == "ok" and not self.listed_bad and not self.unlisted


def check_store(folder: Path, key: SealingKey) -> StoreReport:
    """What a start would do with this folder, without changing anything."""
    d = SealedDirectory.__new__(SealedDirectory)
    d.folder, d.key = folder, key
    d.max_file = MAX_FILE
    d.manifest = Manifest("", 0, {})
    path = folder / MANIFEST
    if not path.exists():
        report = StoreReport("missing")
    else:
        try:
            d.manifest = Manifest.unseal(key, read_regular(path, MAX_HEADER + 4096))
            report = StoreReport("ok")
        except (SealedFileError, OSError) as exc:
            report = StoreReport(f"unusable: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}")
    for model_id in sorted(d.manifest.models):
        try:
            d.read(model_id, lambda _chunk: None)  # authenticated chunk by chunk, nothing kept
            report.listed_ok.append(model_id)
        except (SealedFileError, OSError) as exc:
            report.listed_bad[model_id] = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    for p in model_files(folder):
        model_id = p.name.split(".", 1)[0]
        if model_id not in d.manifest.models:
            report.unlisted[p.name] = _describe(key, p, model_id)
    report.temporaries = sorted(p.name for p in folder.glob(TEMP_GLOB))
    return report


def _describe(key: SealingKey, path: Path, model_id: str) -> str:
    try:
        _, meta, data = unseal(key, read_regular(path), model_id)
    except (SealedFileError, OSError) as exc:
        return f"does not unseal ({exc})"
    except Exception as exc:
        return f"malformed ({type(exc).__name__})"
    return (
        f"unseals: name {meta.get('name')!r}, sha256 {meta.get('sha256')}, version {meta.get('version')}, "
        f"created {meta.get('created_at')}, {len(data)} bytes"
    )


def recover_store(
    folder: Path, key: SealingKey, *, adopt: set[str] | None = None, adopt_all: bool = False
) -> list[str]:
    """Make the folder startable again; returns what was done, one line each.

    Files the manifest does not list are moved into ``unlisted-<time>/`` unless adopted by
    id (or all, with ``adopt_all``): adopting lists a file again, at the version it holds.
    A manifest that cannot be used is moved aside. Listed models are never dropped. A key
    that opens neither the manifest nor any model file is refused (`StoreError`) before
    anything is moved.
    """
    adopt = adopt or set()
    done: list[str] = []
    report = check_store(folder, key)
    opens_any = any(what.startswith("unseals") for what in report.unlisted.values())
    if report.manifest not in ("ok", "missing") and report.unlisted and not opens_any:
        # Recovering with the wrong key would move every model aside under a manifest that the
        # store's own key cannot read: refuse before changing anything.
        raise StoreError(
            f"this key opens neither {MANIFEST} nor any of the {len(report.unlisted)} model file(s) in {folder}: "
            "it is not this store's key; nothing was changed (give the store's --sealing-key-file, or run "
            "inside the TEE that sealed it)"
        )
    d = SealedDirectory.__new__(SealedDirectory)
    d.folder, d.key = folder, key
    if report.manifest == "ok":
        d.manifest = Manifest.unseal(key, read_regular(folder / MANIFEST, MAX_HEADER + 4096))
    else:
        d.manifest = Manifest(secrets.token_hex(16), 0, {})
        if report.manifest != "missing":
            aside = folder / f"{MANIFEST}.unusable-{_stamp()}"
            os.replace(folder / MANIFEST, aside)
            done.append(f"moved the unusable manifest to {aside.name}")
    aside_dir = folder / f"unlisted-{_stamp()}"
    for name in sorted(report.unlisted):
        model_id = name.split(".", 1)[0]
        path = folder / name
        if adopt_all or model_id in adopt:
            try:
                _, meta, data = unseal(key, read_regular(path), model_id)  # a FIFO or device: refused, never a hang
            except Exception as exc:
                done.append(f"cannot adopt {name}: {exc}")
            else:
                # Sealed again as this store's next version: the operator vouched for this file.
                v = d.manifest.generation + 1
                meta = {**meta, "store_id": d.manifest.store_id, "version": v}
                atomic_write(path, seal(key, model_id, meta, data))
                owner = meta.get("owner_token_hash")
                d.manifest.models[model_id] = Listing(str(meta.get("sha256")), v, str(owner) if owner else None)
                d.manifest.generation = v
                done.append(f"adopted {name} ({meta.get('name')!r}, now version {v})")
                continue
        aside_dir.mkdir(mode=0o700, exist_ok=True)
        os.replace(path, aside_dir / name)
        done.append(f"moved unlisted {name} to {aside_dir.name}/")
    d._write_manifest(d.manifest)
    done.append(f"wrote {MANIFEST}: {len(d.manifest.models)} model(s) listed")
    return done


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%dT%H%M%S", time.gmtime())
