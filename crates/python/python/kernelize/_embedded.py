"""The engine in this process: ``kernelize.open(path)``."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from . import _native
from ._common import (CollectionAPI, FilterLike, Record, SearchResult, as_matrix, check_ids, check_texts,
                      decode_record, filter_text, ids_array)


class Database:
    """A data directory opened in this process.

    One process writes a data directory at a time (an exclusive lock); a second writer
    gets :class:`~kernelize.errors.DirectoryLocked` at once, nothing is touched. Any
    number of processes may open it with ``read_only=True`` beside the writer: a
    read-only open takes no lock, writes nothing, and sees every write the writer had
    acknowledged when it opened (or last called :meth:`refresh`) — never a part of a
    batch, never a write it acknowledged later until the next :meth:`refresh`."""

    def __init__(self, path: Union[str, os.PathLike], read_only: bool = False, durability: str = "always") -> None:
        self._native = _native.Database(os.fspath(path), read_only=read_only, durability=durability)

    @property
    def path(self) -> str:
        return str(self._native.path)

    @property
    def read_only(self) -> bool:
        return self._native.read_only

    def create_collection(self, name: str, dim: Optional[int] = None, metric: str = "cosine", *,
                          quantization: str = "none", m: int = 16, ef_construction: int = 200,
                          modality: Optional[str] = None) -> "Collection":
        """Creates a collection of ``dim``-dimensional vectors compared by ``metric``
        (``cosine``, ``dot`` or ``l2``); ``quantization`` (``none``, ``int8``,
        ``rabitq1``, ``rabitq4``) picks what the search index keeps in memory (results
        are always re-ranked with exact distances). ``modality`` (``text``, ``image``,
        ``audio``) records the encoder and sets ``dim``: ``search(media=...)`` then
        encodes images or voice clips with it."""
        return Collection(self._native.create_collection(name, None if dim is None else int(dim), metric,
                                                         quantization, int(m), int(ef_construction), modality))

    def collection(self, name: str) -> "Collection":
        """An existing collection (:class:`~kernelize.errors.NotFound` otherwise)."""
        return Collection(self._native.collection(name))

    def get_or_create_collection(self, name: str, dim: int, metric: str = "cosine", **kw: Any) -> "Collection":
        if name in self.list_collections():
            return self.collection(name)
        return self.create_collection(name, dim, metric, **kw)

    def list_collections(self) -> List[str]:
        return list(self._native.list_collections())

    def drop_collection(self, name: str) -> None:
        self._native.drop_collection(name)

    def refresh(self) -> None:
        """Read-only opens: see what the writer has acknowledged since (a no-op for the
        writer, which sees its own writes at once)."""
        self._native.refresh()

    def close(self) -> None:
        """Releases the directory (and the writer's lock)."""
        self._native.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writer"
        return f"<kernelize.Database {self.path!r} {mode}>"


class Collection(CollectionAPI):
    """A collection of an embedded :class:`Database`."""

    def __init__(self, native: "_native.Collection") -> None:
        self._c = native
        self.name = native.name
        self.dim = native.dim
        self.metric = native.metric
        self.modality = native.modality

    def upsert(self, ids: Iterable[str], vectors: Any = None, *, texts: Optional[Sequence[Optional[str]]] = None,
               metadata: Optional[Sequence[Optional[Dict[str, Any]]]] = None) -> int:
        """Inserts or replaces records by id; returns the write's sequence number.

        ``vectors``: ``[n, dim]`` float32 (float64 is converted), or ``None`` to embed
        ``texts`` with MiniLM (384-dim collections). The call is one atomic batch up to
        32 MiB encoded; a larger call is split into batches written in order with one
        fsync, every one of them durable when it returns (after a crash mid-call, a prefix
        of them may be present)."""
        ids, v, t, m = self._upsert_args(ids, vectors, texts, metadata)
        return self._c.upsert(ids, v, t, m)

    def delete(self, ids: Iterable[str]) -> int:
        """Deletes records by id (atomically); absent ids are no error."""
        return self._c.delete(check_ids(ids))

    def _encode_media(self, files: List[bytes]) -> np.ndarray:
        return _native.embed_media(files, self.modality)

    def _get(self, ids: List[str], vectors: bool) -> List[Optional[Record]]:
        return [decode_record(r) for r in self._c.get(ids, vectors)]

    def _search(self, q: Optional[np.ndarray], t: Optional[List[str]], k: int, ef: Optional[int],
                f: Optional[str], mode: str, exact: bool, records: bool, include_vectors: bool) -> SearchResult:
        ids, scores, recs = self._c.search(q, t, k, ef, f, mode, exact, records, include_vectors)
        if recs is not None:
            recs = [[decode_record(r) for r in row] for row in recs]
        return SearchResult(ids_array(ids, k), scores, recs)

    def count(self) -> int:
        """Live records."""
        return self._c.count()

    def stats(self) -> Dict[str, Any]:
        return dict(self._c.stats())

    def flush(self) -> None:
        """Writes the in-memory part out as a segment file."""
        self._c.flush()

    def compact(self) -> None:
        """Merges every segment into one, dropping deleted and overwritten records."""
        self._c.compact()

    def build_index(self) -> int:
        """Builds the search index of every segment that has none (else the first search
        does); returns how many were built."""
        return self._c.build_index()

    def to_arrow(self, batch_size: int = 8192, vectors: bool = True):
        """Every live record of a snapshot taken now, streamed as a
        ``pyarrow.RecordBatchReader`` (``id``, ``vector`` fixed-size list of float32,
        ``text``, ``metadata`` as JSON text), ``batch_size`` rows at a time."""
        import pyarrow as pa

        return pa.RecordBatchReader.from_stream(self._c.arrow_stream(batch_size, vectors))

    def arrow_stream(self, batch_size: int = 8192, vectors: bool = True):
        """The same stream as an object with ``__arrow_c_stream__`` (for polars, DuckDB…)."""
        return self._c.arrow_stream(batch_size, vectors)

    def build_kernel(self, out: Union[str, os.PathLike], signing_key: Union[str, os.PathLike], *,
                     quantization: str = "rabitq4", dedup_threshold: Optional[float] = 0.97,
                     keep_text: bool = True, kernel_version: int = 1, seed: Optional[int] = None) -> Dict[str, Any]:
        """Compresses this collection into a signed knowledge kernel at ``out``; returns
        its manifest (with the compression report)."""
        return json.loads(self._c.build_kernel(os.fspath(out), os.fspath(signing_key), quantization,
                                               dedup_threshold, keep_text, kernel_version, seed))


class Kernel:
    """A knowledge kernel, opened by mmap and checked (hashes, expiry; the signature when
    ``pubkey`` is given: 64 hex digits or a ``.pub`` file) and searched offline."""

    def __init__(self, native: "_native.Kernel") -> None:
        self._k = native
        self.manifest: Dict[str, Any] = json.loads(native.manifest_json())
        self.dim: int = native.dim

    @classmethod
    def open(cls, path: Union[str, os.PathLike], pubkey: Optional[str] = None,
             allow_expired: bool = False) -> "Kernel":
        return cls(_native.Kernel(os.fspath(path), pubkey, allow_expired))

    @property
    def signature_verified(self) -> bool:
        return self._k.signature_verified

    def search(self, queries: Any = None, *, texts: Optional[Sequence[str]] = None, k: int = 10,
               probe: Optional[int] = None, filter: FilterLike = None,
               return_records: bool = False) -> SearchResult:
        """Nearest rows for each query (``ids`` are each row's representative id; with
        ``return_records`` every id a row stands for, its text and metadata)."""
        q = None if queries is None else as_matrix(queries, self.dim, "queries")
        t = None if texts is None else [str(x) for x in check_texts(texts, None)]
        ids, scores, recs = self._k.search(q, t, int(k), probe, filter_text(filter), return_records)
        if recs is not None:
            recs = [[decode_record(r) for r in row] for row in recs]
        return SearchResult(ids_array(ids, int(k)), scores, recs)

    def __repr__(self) -> str:
        m = self.manifest
        return f"<kernelize.Kernel {m.get('kernel_id')} v{m.get('kernel_version')} rows={m.get('rows')}>"
