"""The model store: identity, ownership, budget and persistence.

Knows nothing of HTTP. An upload arrives hashed and bounded (``http/bodies.py``); the
finished bytes are vetted (``vetting.py``) before onnxruntime ever sees them. Owner tokens
are returned once and kept only as SHA-256 hashes; with a sealed directory every change is
written before it is acknowledged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.models import ModelInfo, TensorInfo, is_sha256_hex
from ..protocol.tensors import DATATYPES, check_shape
from .errors import (
    CapacityExceeded,
    Conflict,
    CoreError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PinMismatch,
    Unauthenticated,
    Unavailable,
)
from .inference import LoadedModel, run_slots
from .modelfile import ModelFile
from .sealing import MAX_HEADER, SealedDirectory, SealedFileError, StoreError
from .vetting import DEFAULT_DOMAINS, VettedModel, vet_model

__all__ = ["ModelEntry", "ModelStore", "StoreLimits", "hash_token", "parse_hints"]

log = logging.getLogger("blindai.models")

MAX_NAME = 128
RETRY_S = 2.0  # a listed model that failed to load is read again at most this often


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_model_bytes: int = 2 << 30
    max_models: int = 64
    max_store_bytes: int = 16 << 30
    allowed_domains: frozenset[str] = DEFAULT_DOMAINS
    intra_op_threads: int = 0  # threads of a lone run (the wide session); 0: the cores this process may use
    model_concurrency: int = 0  # runs of one model at once (narrow session, 1 thread each); 0: as many as cores
    # Larger models get no second (narrow) session: it would cost their size again in memory, and their
    # runs are long enough for intra-op threads to use the cores well (performance.md).
    concurrent_session_max_bytes: int = 256 << 20
    # Dynamic batching is on (--batch-window-ms): every model's graph is analysed for rows that mix
    # (rowwise.py, tens of ms for a large graph); off, no model is ever batched and none is analysed.
    batching: bool = False


@dataclass(slots=True)
class ModelEntry:
    model_id: str
    name: str
    sha256: str
    size: int
    created_at: str
    owner_token_hash: str
    model: LoadedModel = field(repr=False)
    hints: dict[str, Any] = field(default_factory=dict)
    public: bool = False  # listed for every caller, and found by name without a token
    held_bytes: int = 0  # what it holds once loaded (vet_model): the store's limit counts this

    @property
    def inputs(self) -> list[TensorInfo]:
        return self.model.inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self.model.outputs

    def info(self) -> ModelInfo:
        """Public metadata: never the owner token or its hash."""
        return ModelInfo(
            model_id=self.model_id,
            name=self.name,
            sha256=self.sha256,
            size=self.size,
            created_at=self.created_at,
            inputs=tuple(self.inputs),
            outputs=tuple(self.outputs),
            hints=dict(self.hints),
        )


@dataclass(frozen=True, slots=True)
class DeletedModel:
    """What deleting a listed model that never loaded returns: only its id is known."""

    model_id: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_hints(shape: str | None, input_datatype: str | None, output_datatype: str | None) -> dict[str, Any]:
    """Seed-API upload hints: the flat-list input's shape and the datatypes to use."""
    hints: dict[str, Any] = {}
    if shape:
        try:
            dims = [int(x) for x in shape.split(",") if x.strip()]
        except ValueError:
            raise InvalidRequest(f"input shape hint {shape!r} must be comma-separated integers") from None
        try:
            hints["input_shape"] = list(check_shape(dims, "hint"))
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
    for key, value in (("input_datatype", input_datatype), ("output_datatype", output_datatype)):
        if value:
            if value not in DATATYPES:
                raise InvalidRequest(f"{key} hint {value!r} is not one of {list(DATATYPES)}")
            hints[key] = value
    return hints


def _now() -> str:
    """A model's ``created_at``: UTC, ISO 8601, microseconds (it orders the listing)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


class ModelStore:
    """Models held in TEE memory, optionally sealed to disk; thread-safe.

    A model is acknowledged (its upload answered) only once it is durable: vetted,
    loaded by onnxruntime and, with a sealed directory, fsynced and listed.
    """

    def __init__(
        self,
        limits: StoreLimits | None = None,
        *,
        sealed: SealedDirectory | None = None,
        upload_token_hashes: frozenset[str] | None = None,
        memory: str = "bytes",
    ) -> None:
        self.limits = limits or StoreLimits()
        self.memory = memory  # where uploads are held: one of modelfile.MEMORY_KINDS
        self.sealed = sealed
        self.upload_token_hashes = upload_token_hashes
        self._models: dict[str, ModelEntry] = {}
        self._unavailable: dict[str, str] = {}  # listed in the sealed store, not loaded: why
        self._retry_at: dict[str, float] = {}
        self._reloading: set[str] = set()  # listed models being read again now
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one sealed write at a time keeps the manifest simple

    def load_sealed(self) -> int:
        """At start: every listed model that reads, matches the manifest and passes vetting again.

        A listed model that does not is kept listed, its file untouched, reported, and retried
        when it is asked for (a transient read error must not delete a model). Raises
        StoreError (the start is refused) when there is no manifest to trust.
        """
        if self.sealed is None:
            return 0
        loaded = 0
        self.sealed.max_file = self.limits.max_model_bytes + MAX_HEADER + 4096  # a bigger file is no model of ours
        for model_id in self.sealed.open(log):
            if self._load_one(model_id):
                loaded += 1
        if self._unavailable:
            log.error(
                "%d listed model(s) not loaded, kept listed and retried when asked for: %s",
                len(self._unavailable),
                ", ".join(f"{k} ({v})" for k, v in sorted(self._unavailable.items())),
            )
        log.info("loaded %d sealed model(s) from %s", loaded, self.sealed.folder)
        return loaded

    def _load_one(self, model_id: str) -> bool:
        """Read, vet and load one listed model (slow: no store lock is held meanwhile), then list
        it as loaded under the write lock unless it was deleted in between."""
        assert self.sealed is not None
        started = time.monotonic()
        try:
            with self.new_model_file() as model:
                meta = self.sealed.read(model_id, model.write)  # decrypted chunk by chunk into the file
                model.finish()
                vetted = self._vet(model)
                concurrency, held = self._sessions(model, vetted)
                entry = ModelEntry(
                    model_id=model_id,
                    name=str(meta["name"]),
                    sha256=str(meta["sha256"]),
                    size=model.size,
                    created_at=str(meta["created_at"]),
                    owner_token_hash=str(meta["owner_token_hash"]),
                    model=self._load(model, vetted, concurrency),
                    hints=dict(meta.get("hints") or {}),
                    public=meta.get("public") is True,
                    held_bytes=held,
                )
        except OSError as exc:
            reason = f"cannot read {model_id}.model.sealed: {exc.strerror or type(exc).__name__}"
        except (SealedFileError, CoreError, KeyError, TypeError, ValueError) as exc:
            reason = f"{model_id}.model.sealed not loaded: {exc}"
        else:
            with self._write_lock, self._lock:
                if model_id not in self.sealed.manifest.models:  # deleted while it loaded: stays deleted
                    entry.model.close()
                    self._unavailable.pop(model_id, None)
                    return False
                self._models[model_id] = entry
                self._unavailable.pop(model_id, None)
            return True
        log.error("sealed model %s", reason)
        # Retried at most every RETRY_S, and never more than a fifth of the time: a file that takes
        # long to fail (a large one, rewritten by the host) cannot keep the server reading it.
        wait = max(RETRY_S, 4 * (time.monotonic() - started))
        with self._lock:
            if model_id in self.sealed.manifest.models:
                self._unavailable[model_id] = reason
                self._retry_at[model_id] = time.monotonic() + wait
        return False

    def reload_due(self, ref: str) -> bool:
        """Whether `get` would now read a listed model that did not load again (a whole file:
        callers on an event loop run that `get` in a thread)."""
        with self._lock:
            return (
                ref in self._unavailable
                and ref not in self._reloading
                and time.monotonic() >= self._retry_at.get(ref, 0.0)
            )

    def _retry(self, model_id: str) -> None:
        """A listed model that did not load is tried again when asked for, at most every RETRY_S."""
        with self._lock:
            due = (
                model_id in self._unavailable
                and model_id not in self._reloading
                and time.monotonic() >= self._retry_at.get(model_id, 0.0)
            )
            if due:
                self._reloading.add(model_id)
        if due:
            try:
                self._load_one(model_id)  # one reload of a model at a time, without the write lock
            finally:
                with self._lock:
                    self._reloading.discard(model_id)
        with self._lock:
            reason = self._unavailable.get(model_id)
        if reason is not None:
            raise Unavailable(
                f"model {model_id} is in the store but could not be loaded ({reason}); "
                "it is kept and served once its file reads"
            )

    def new_model_file(self) -> ModelFile:
        """Where an upload's body goes (an in-memory file where this server uses them, else bytes)."""
        return ModelFile(memory=self.memory)

    def _own(self, model: ModelFile | bytes) -> contextlib.AbstractContextManager[ModelFile]:
        """Bytes become a model file this call closes; a caller's file stays the caller's (open
        for the call: `http.v1.in_thread` gives the store work a descriptor of its own)."""
        if isinstance(model, bytes):
            return ModelFile.from_bytes(model, memory=self.memory)
        return contextlib.nullcontext(model)

    def _sessions(self, model: ModelFile, vetted: VettedModel) -> tuple[int, int]:
        """How many runs of the model may go at once, and the bytes it then holds. A second
        (concurrent) session folds its own constants and densifies its own sparse tensors, so a
        model gets one only when what a session holds is below --concurrent-session-max-bytes
        (the file size alone let a 136-byte model folding 512 MiB have two), and is counted twice."""
        concurrency = self.limits.model_concurrency
        if max(model.size, vetted.held) > self.limits.concurrent_session_max_bytes:
            concurrency = 1
        two = run_slots(concurrency, self.limits.intra_op_threads) > 1
        return concurrency, vetted.held + (vetted.per_session if two else 0)

    def _vet(self, model: ModelFile) -> VettedModel:
        """``vet_model`` under this store's limits, on a read-only mapping of the file (uploads and
        sealed reloads alike)."""
        with model.view() as view:
            return vet_model(view, self.limits.allowed_domains, self.limits.max_model_bytes, rows=self.limits.batching)

    def _load(self, model: ModelFile, vetted: VettedModel, concurrency: int) -> LoadedModel:
        if self.limits.batching and vetted.rows_mixed is not None:
            log.info("a model will run without dynamic batching: %s", vetted.rows_mixed)
        return LoadedModel(
            model,
            skeleton=vetted.skeleton,
            intra_op_threads=self.limits.intra_op_threads,
            concurrency=concurrency,
            rows_mixed=vetted.rows_mixed,
        )

    def check_upload_token(self, token: str | None) -> None:
        if self.upload_token_hashes is None:
            return
        if token is None:
            raise Unauthenticated("this server requires an upload token")
        h = hash_token(token)
        if not any(hmac.compare_digest(h, allowed) for allowed in self.upload_token_hashes):
            raise Forbidden("this upload token is not accepted")

    def add(
        self,
        model: ModelFile | bytes,
        sha256: str,
        *,
        name: str | None,
        hints: dict[str, Any] | None = None,
        public: bool = False,
    ) -> tuple[ModelEntry, str]:
        """Vet, load and register a model; returns the entry and its owner token (shown once).

        ``model`` is a finished `ModelFile` (the caller keeps and closes it) or the bytes.
        """
        if name is not None and (len(name) > MAX_NAME or not name.isprintable()):
            raise InvalidRequest(f"model name must be printable and at most {MAX_NAME} characters")
        token = secrets.token_urlsafe(32)  # 256 bits
        # Unnamed uploads (the seed client's) keep the default name and claim no public name.
        claim = name if public and name is not None else None

        def build(loaded: LoadedModel, held: int) -> ModelEntry:
            return ModelEntry(
                model_id=uuid.uuid4().hex,
                name=name or "model",
                sha256=sha256,
                size=size,
                created_at=_now(),
                owner_token_hash=hash_token(token),
                model=loaded,
                hints=hints or {},
                public=public,
                held_bytes=held,
            )

        with self._own(model) as own:
            size = own.size
            entry = self._admit(own, build, public_name=claim)
        log.info("model %s (%s, %d bytes, sha256 %s) loaded", entry.model_id, entry.name, entry.size, sha256)
        return entry, token

    def _admit(
        self,
        model: ModelFile,
        build: Callable[[LoadedModel, int], ModelEntry],
        *,
        replacing: ModelEntry | None = None,
        public_name: str | None = None,
    ) -> ModelEntry:
        """What an upload and a replacement share: room, vetting, room for what it holds once
        loaded (before onnxruntime pays for it), loading, then room again, sealing and listing
        under the write lock. ``build`` makes the entry from the loaded model and its held bytes."""
        with self._lock:
            self._check_room(model.size, replacing=replacing)
            if public_name is not None:
                self._check_public_name(public_name)
        vetted = self._vet(model)
        concurrency, held = self._sessions(model, vetted)
        with self._lock:
            self._check_room(held, replacing=replacing)
        entry = build(self._load(model, vetted, concurrency), held)
        with self._write_lock:
            with self._lock:
                if replacing is not None and self._models.get(replacing.model_id) is not replacing:
                    raise Conflict(
                        f"model {replacing.model_id} was deleted or replaced while this replacement was loading; "
                        "nothing was changed"
                    )
                self._check_room(held, replacing=replacing)
                if public_name is not None:
                    self._check_public_name(public_name)
            self._persist(entry, model)
            with self._lock:
                self._models[entry.model_id] = entry
        return entry

    def _persist(self, entry: ModelEntry, model: ModelFile) -> None:
        if self.sealed is None:
            return
        meta = {
            "name": entry.name,
            "sha256": entry.sha256,
            "created_at": entry.created_at,
            "owner_token_hash": entry.owner_token_hash,
            "hints": entry.hints,
            "public": entry.public,
        }
        try:
            with model.view() as view:
                self.sealed.save(entry.model_id, meta, view)
        except StoreError as exc:
            log.error("sealing model %s refused: %s", entry.model_id, exc)
            raise CapacityExceeded(f"the model could not be stored: {exc}; it was not added") from exc
        except OSError as exc:
            log.error("sealing model %s failed: %s", entry.model_id, exc.strerror or type(exc).__name__)
            raise CapacityExceeded("the model could not be stored (disk full or unwritable); it was not added") from exc

    def replace(self, ref: str, token: str | None, model: ModelFile | bytes, sha256: str) -> ModelEntry:
        """New content under the same id, for the owner only; the old version stays until the new one is durable."""
        old = self.get(ref, tokens=[token] if token else ())
        self._check_owner(old, token, "replacing")

        def build(loaded: LoadedModel, held: int) -> ModelEntry:
            return ModelEntry(
                model_id=old.model_id,
                name=old.name,
                sha256=sha256,
                size=size,
                created_at=_now(),
                owner_token_hash=old.owner_token_hash,
                model=loaded,
                hints=old.hints,
                public=old.public,
                held_bytes=held,
            )

        with self._own(model) as own:
            size = own.size
            entry = self._admit(own, build, replacing=old)
        log.info("model %s replaced (%d bytes, sha256 %s)", entry.model_id, entry.size, sha256)
        return entry

    def _check_public_name(self, name: str) -> None:
        """A public name belongs to its first claimant while that model exists (lookups stay unambiguous).

        Owner tokens are per model, so a second public upload of a name cannot be told apart from
        another tenant's: refused either way; the owner replaces the model (same id, same name) instead.
        """
        for m in self._models.values():
            if m.public and m.name == name:
                raise Conflict(
                    f"a public model named {name!r} exists ({m.model_id}); public names are unique: "
                    "choose another name, or replace that model with its owner token"
                )

    def _check_room(self, size: int, *, replacing: ModelEntry | None = None) -> None:
        """A new model needs a free slot; a replacement only the bytes it adds (the old ones go)."""
        if replacing is None and len(self._models) + len(self._unavailable) >= self.limits.max_models:
            raise CapacityExceeded(f"the server already holds {self.limits.max_models} models (the limit)")
        used = sum(max(m.size, m.held_bytes) for m in self._models.values()) - (
            max(replacing.size, replacing.held_bytes) if replacing is not None else 0
        )
        if used + size > self.limits.max_store_bytes:
            raise CapacityExceeded(
                f"storing {size} more bytes (what the model holds once loaded) would exceed the store limit of "
                f"{self.limits.max_store_bytes} (--max-store-bytes)"
            )

    def get(self, ref: str, *, sha256: str | None = None, tokens: Iterable[str] = ()) -> ModelEntry:
        """By id (a capability: anyone who knows it), or by name; optionally pinned by hash.

        Names resolve per owner: among the models of the owner tokens presented, else among
        public models. So another tenant's upload of the same name can neither shadow a
        tenant's model nor make its lookups ambiguous.
        """
        hashes = {hash_token(t) for t in tokens}
        with self._lock:
            entry = self._models.get(ref)
            if entry is None:
                own = [m for m in self._models.values() if m.name == ref and m.owner_token_hash in hashes]
                named = own or [m for m in self._models.values() if m.name == ref and m.public]
                if len(named) > 1:
                    whose = "of yours" if own else "public models"
                    raise Conflict(f"{len(named)} {whose} are named {ref!r}; use a model_id")
                entry = named[0] if named else None
        if entry is None:
            self._retry(ref)  # a listed model that did not load: 503, or loaded now
            with self._lock:
                entry = self._models.get(ref)
        if entry is None:
            raise NotFound(f"no model {ref!r}")
        if sha256 is not None and not is_sha256_hex(sha256):
            raise InvalidRequest("a model pin must be a SHA-256 digest: 64 hex digits")
        if sha256 is not None and not hmac.compare_digest(sha256.lower(), entry.sha256):
            raise PinMismatch(f"model {entry.model_id} has sha256 {entry.sha256}, not the pinned {sha256.lower()}")
        return entry

    def count(self) -> int:
        """How many models are loaded (the metrics gauge asks after every request: no sorting)."""
        with self._lock:
            return len(self._models)

    def all(self) -> list[ModelEntry]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.created_at)

    def list(self, tokens: Iterable[str]) -> list[ModelEntry]:
        """The models a caller may see: those of the owner tokens it presents, and public ones."""
        hashes = {hash_token(t) for t in tokens}
        return [m for m in self.all() if m.public or m.owner_token_hash in hashes]

    def check_owner_early(self, ref: str, token: str | None) -> None:
        """Before receiving a replacement body: refuse strangers without reading their bytes."""
        self._check_owner(self.get(ref, tokens=[token] if token else ()), token, "replacing")

    def delete_unprotected(self, model_id: str) -> None:
        """Only for models uploaded through the 0.6 protocol, which has no owner tokens."""
        entry = self.get(model_id)
        with self._write_lock:
            if self.sealed is not None:
                self.sealed.delete(entry.model_id)
            with self._lock:
                self._models.pop(entry.model_id, None)
        log.info("model %s deleted (0.6 protocol)", entry.model_id)

    @staticmethod
    def _check_owner(entry: ModelEntry, token: str | None, action: str) -> None:
        ModelStore._check_token(entry.owner_token_hash, token, action)

    @staticmethod
    def _check_token(owner_token_hash: str, token: str | None, action: str) -> None:
        if token is None:
            raise Unauthenticated(f"{action} a model needs its owner token")
        if not hmac.compare_digest(hash_token(token), owner_token_hash):
            raise Forbidden("wrong owner token for this model")

    def _delete_unavailable(self, model_id: str, token: str | None) -> DeletedModel | None:
        """A listed model whose file does not load: its owner may still delete it.

        The manifest keeps each model's owner-token hash, so no readable file is needed to check it.
        """
        # Decided under the write lock: a reload that lists the model as loaded takes it too, so
        # either the reload came first (the normal delete below removes the loaded model) or the
        # delete did (the reload finds the model unlisted and drops what it loaded).
        with self._write_lock:
            with self._lock:
                if model_id not in self._unavailable or model_id in self._models or self.sealed is None:
                    return None
            listing = self.sealed.manifest.models.get(model_id)
            if listing is None or listing.owner is None:  # listed by an older manifest: no owner to check
                return None
            self._check_token(listing.owner, token, "deleting")
            try:
                self.sealed.delete(model_id)
            except OSError as exc:
                raise CapacityExceeded("the model could not be deleted from the store; it is kept") from exc
            with self._lock:
                self._unavailable.pop(model_id, None)
                self._retry_at.pop(model_id, None)
        log.info("model %s deleted (it was listed but not loaded)", model_id)
        return DeletedModel(model_id)

    def delete(self, ref: str, token: str | None) -> ModelEntry | DeletedModel:
        gone = self._delete_unavailable(ref, token)
        if gone is not None:
            return gone
        entry = self.get(ref, tokens=[token] if token else ())
        self._check_owner(entry, token, "deleting")
        with self._write_lock:
            if self.sealed is not None:
                try:
                    self.sealed.delete(entry.model_id)
                except OSError as exc:
                    raise CapacityExceeded("the model could not be deleted from the store; it is kept") from exc
            with self._lock:
                self._models.pop(entry.model_id, None)
        log.info("model %s deleted", entry.model_id)
        return entry
