"""The chunked sealed format (format 2) against a host that edits model files at rest.

The host can cut, reorder, repeat, drop and splice chunks, between files of the same store
too (same sealing key), and can write headers asking the reader for huge chunks. What it
must get: a SealedFileError every time, no plaintext of a forged arrangement accepted, and
no allocation larger than the chunk bound. Format 1 files (written by earlier versions) are
still read.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindai.server import sealing

CHUNK = sealing.MIN_CHUNK  # small chunks: many boundaries to attack in a small file


@pytest.fixture()
def key() -> sealing.SealingKey:
    return sealing.SealingKey(os.urandom(32), source="test")


def sealed(key: sealing.SealingKey, ident: str, plaintext: bytes, chunk: int = CHUNK) -> bytes:
    parts: list[bytes] = []
    sealing.seal_to(parts.append, key, ident, {"sha256": "00"}, plaintext, chunk=chunk)
    return b"".join(parts)


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header and sealed chunks of a format-2 file (what an attacker can see without the key)."""
    (hlen,) = struct.unpack_from("<I", blob, 8)
    head, body = blob[: 12 + hlen], blob[12 + hlen :]
    size = json.loads(blob[12 : 12 + hlen])["chunk"] + 16
    return head, [body[i : i + size] for i in range(0, len(body), size)]


def refused(key: sealing.SealingKey, blob: bytes, ident: str = "abc", tmp: Path | None = None) -> None:
    with pytest.raises(sealing.SealedFileError):
        sealing.unseal(key, blob, ident)
    if tmp is not None:
        path = tmp / "f.sealed"
        path.write_bytes(blob)
        with pytest.raises(sealing.SealedFileError):
            sealing.unseal_file(key, path, ident, lambda _chunk: None)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_whole_and_streamed(key: sealing.SealingKey, tmp_path: Path, size: int) -> None:
    plaintext = os.urandom(size)
    blob = sealed(key, "abc", plaintext)
    assert blob[:8] == sealing.MAGIC2
    assert sealing.unseal(key, blob, "abc")[2] == plaintext
    (tmp_path / "m").write_bytes(blob)
    got: list[bytes] = []
    _, meta = sealing.unseal_file(key, tmp_path / "m", "abc", got.append)
    assert b"".join(got) == plaintext and meta == {"sha256": "00"}
    assert all(len(c) <= CHUNK for c in got)  # the reader holds one chunk at a time


def test_cut_at_every_chunk_boundary_and_inside(key: sealing.SealingKey, tmp_path: Path) -> None:
    blob = sealed(key, "abc", os.urandom(3 * CHUNK))  # three full chunks: a cut leaves whole chunks
    head, chunks = split(blob)
    for keep in range(len(chunks)):
        refused(key, head + b"".join(chunks[:keep]), tmp=tmp_path)
    for cut in (1, 15, 16, 17, CHUNK):
        refused(key, blob[:-cut], tmp=tmp_path)


def test_reordered_repeated_dropped_and_appended_chunks(key: sealing.SealingKey, tmp_path: Path) -> None:
    blob = sealed(key, "abc", os.urandom(3 * CHUNK + 100))
    head, c = split(blob)
    assert len(c) == 4
    for arrangement in (
        [c[1], c[0], c[2], c[3]],  # swapped
        [c[0], c[0], c[2], c[3]],  # repeated
        [c[0], c[2], c[3]],  # dropped from the middle
        [c[0], c[1], c[2], c[3], c[3]],  # the final chunk twice
        [c[0], c[1], c[2], c[1]],  # a non-final chunk as the last
    ):
        refused(key, head + b"".join(arrangement), tmp=tmp_path)


def test_chunks_spliced_from_another_file_of_the_same_store(key: sealing.SealingKey, tmp_path: Path) -> None:
    """Same sealing key, same id even: each file has its own data key and nonce prefix."""
    a_head, a = split(sealed(key, "abc", os.urandom(2 * CHUNK + 5)))
    b_head, b = split(sealed(key, "abc", os.urandom(2 * CHUNK + 5)))
    refused(key, a_head + a[0] + b[1] + a[2], tmp=tmp_path)
    refused(key, b_head + a[0] + a[1] + a[2], tmp=tmp_path)


def test_every_flipped_byte_of_a_multi_chunk_file(key: sealing.SealingKey) -> None:
    blob = sealed(key, "abc", os.urandom(2 * CHUNK + 33))
    for i in range(0, len(blob), 97):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        refused(key, bytes(bad))


def _header(key: sealing.SealingKey, ident: str, **fields: object) -> bytes:
    wrap_nonce, wrapped = key.wrap(AESGCM.generate_key(256), ident)
    header: dict[str, object] = {
        "id": ident,
        "meta": {},
        "wrap_nonce": base64.b64encode(wrap_nonce).decode(),
        "wrapped_key": base64.b64encode(wrapped).decode(),
        "nonce_prefix": base64.b64encode(os.urandom(7)).decode(),
        "chunk": CHUNK,
    }
    header.update(fields)
    raw = json.dumps(header).encode()
    return sealing.MAGIC2 + struct.pack("<I", len(raw)) + raw


@pytest.mark.parametrize(
    "fields",
    [
        {"chunk": 1 << 40},  # a reader that believed it would allocate a terabyte per chunk
        {"chunk": sealing.MAX_CHUNK + 1},
        {"chunk": 0},
        {"chunk": -16},
        {"chunk": 4096.5},
        {"chunk": "4096"},
        {"chunk": True},
        {"nonce_prefix": base64.b64encode(b"\x01" * 3).decode()},
        {"nonce_prefix": base64.b64encode(b"\x01" * 12).decode()},
    ],
    ids=repr,
)
def test_hostile_headers_are_refused_before_reading_chunks(
    key: sealing.SealingKey, tmp_path: Path, fields: dict[str, object]
) -> None:
    refused(key, _header(key, "abc", **fields) + os.urandom(64), tmp=tmp_path)


def _seal_v1(key: sealing.SealingKey, ident: str, meta: dict[str, object], plaintext: bytes) -> bytes:
    """Format 1 as earlier versions wrote it (one AES-GCM message), rebuilt here from its spec."""
    data_key = AESGCM.generate_key(256)
    wrap_nonce, wrapped = key.wrap(data_key, ident)
    data_nonce = secrets.token_bytes(12)
    header = json.dumps(
        {
            "id": ident,
            "meta": meta,
            "wrap_nonce": base64.b64encode(wrap_nonce).decode(),
            "wrapped_key": base64.b64encode(wrapped).decode(),
            "data_nonce": base64.b64encode(data_nonce).decode(),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    aad = sealing.MAGIC + struct.pack("<I", len(header)) + header
    return aad + AESGCM(data_key).encrypt(data_nonce, plaintext, aad)


def test_format_1_files_are_still_read_and_still_authenticated(key: sealing.SealingKey, tmp_path: Path) -> None:
    plaintext = os.urandom(CHUNK * 2 + 7)
    blob = _seal_v1(key, "abc", {"sha256": "00"}, plaintext)
    assert sealing.unseal(key, blob, "abc")[2] == plaintext
    (tmp_path / "v1").write_bytes(blob)
    got: list[bytes] = []
    assert sealing.unseal_file(key, tmp_path / "v1", "abc", got.append)[1] == {"sha256": "00"}
    assert b"".join(got) == plaintext
    refused(key, blob[:-1], tmp=tmp_path)
    # A format-1 body under a format-2 magic (or the reverse) fails authentication: the magic is in the aad.
    refused(key, sealing.MAGIC2 + blob[8:], tmp=tmp_path)
    refused(key, sealing.MAGIC + sealed(key, "abc", plaintext)[8:], tmp=tmp_path)


def test_a_store_written_by_an_earlier_version_still_opens(key: sealing.SealingKey, tmp_path: Path) -> None:
    """Every file of a store (the manifest included) re-sealed as format 1: the store opens and reads."""
    import logging

    folder = tmp_path / "store"
    d = sealing.SealedDirectory(folder, key)
    d.open(logging.getLogger("test"))
    d.save("m1", {"sha256": "aa", "name": "m"}, b"model bytes")
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        ident, meta, data = sealing.unseal(key, path.read_bytes())
        path.write_bytes(_seal_v1(key, ident, meta, data))
        assert path.read_bytes()[:8] == sealing.MAGIC
    again = sealing.SealedDirectory(folder, key)
    assert again.open(logging.getLogger("test")) == ["m1"]
    got: list[bytes] = []
    assert again.read("m1", got.append)["sha256"] == "aa" and b"".join(got) == b"model bytes"
