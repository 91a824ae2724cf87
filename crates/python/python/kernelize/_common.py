"""What the embedded and the HTTP collection share: argument checks, results, the
methods built on the primitives each implements."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from .errors import InvalidArgument

Record = Dict[str, Any]
"""A record: ``{"id": str, "vector": ndarray[float32] (when asked), "text": str | None,
"metadata": dict | None}``."""

FilterLike = Union[str, Dict[str, Any], None]
"""A filter: the text form (``pos = "n" and year >= 1990``) or its JSON form as a dict."""

MODES = ("vector", "keyword", "hybrid")


@dataclass
class SearchResult:
    """Results of ``nq`` queries, best first.

    ``ids`` is an object array ``[nq, k]`` of record ids (``None`` where a query found
    fewer than ``k``), ``scores`` a float32 array ``[nq, k]`` (NaN there): cosine
    similarity, dot product or L2 distance by metric; BM25 for keyword; the fused score
    for hybrid. ``records`` holds the records (``return_records=True``)."""

    ids: np.ndarray
    scores: np.ndarray
    records: Optional[List[List[Record]]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def hits(self, i: int = 0) -> List[tuple]:
        """Query ``i``'s hits as ``(id, score)`` pairs, without padding."""
        return [(rid, float(s)) for rid, s in zip(self.ids[i], self.scores[i]) if rid is not None]


def ids_array(rows: Sequence[Sequence[str]], k: int) -> np.ndarray:
    out = np.full((len(rows), k), None, dtype=object)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = row
    return out


def check_ids(ids: Any, what: str = "ids") -> List[str]:
    if isinstance(ids, str):
        raise InvalidArgument(f"{what}: give a list of ids, not one string")
    if isinstance(ids, np.ndarray):
        ids = ids.tolist()
    ids = list(ids)
    for i, v in enumerate(ids):
        if type(v) is not str:
            raise InvalidArgument(f"{what}[{i}] is {type(v).__name__} {v!r:.40}; ids are strings")
    return ids


def as_matrix(x: Any, dim: int, what: str, rows: Optional[int] = None) -> np.ndarray:
    """A C-contiguous float32 ``[n, dim]`` array from ``x``, or a clear error.

    float32 arrays pass without a copy; float64 and float16 are converted (a value past
    float32's range becomes infinite and is refused); integer, bool and object arrays are
    refused. A 1-D array is one row."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == np.float32:
        pass
    elif a.dtype.kind == "f":
        with np.errstate(over="ignore"):
            a = a.astype(np.float32)
    else:
        raise InvalidArgument(
            f"{what}: dtype {a.dtype} is not a float type; convert with .astype(numpy.float32)")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise InvalidArgument(f"{what}: expected a 2-D array [n, {dim}], got shape {a.shape}")
    if a.shape[1] != dim:
        raise InvalidArgument(f"{what}: shape {a.shape}: the collection has dim {dim}")
    if rows is not None and a.shape[0] != rows:
        raise InvalidArgument(f"{what}: {a.shape[0]} rows for {rows} ids")
    if not np.isfinite(a).all():
        r, c = np.argwhere(~np.isfinite(a))[0]
        raise InvalidArgument(f"{what}[{r}, {c}] is {a[r, c]} (not finite)")
    return np.ascontiguousarray(a)


def check_texts(texts: Any, n: Optional[int], what: str = "texts") -> List[Optional[str]]:
    if isinstance(texts, str):
        raise InvalidArgument(f"{what}: give a list of texts, not one string")
    texts = list(texts)
    if n is not None and len(texts) != n:
        raise InvalidArgument(f"{what} has {len(texts)} entries for {n} ids")
    for i, t in enumerate(texts):
        if t is not None and type(t) is not str:
            raise InvalidArgument(f"{what}[{i}] is {type(t).__name__}, not a string")
    return texts


def metadata_json(metadata: Any, ids: Sequence[str]) -> List[Optional[str]]:
    if isinstance(metadata, dict):
        raise InvalidArgument("metadata: give a list with one dict (or None) per id")
    metadata = list(metadata)
    if len(metadata) != len(ids):
        raise InvalidArgument(f"metadata has {len(metadata)} entries for {len(ids)} ids")
    out: List[Optional[str]] = []
    for i, m in enumerate(metadata):
        if m is None:
            out.append(None)
        elif isinstance(m, dict):
            try:
                out.append(json.dumps(m, allow_nan=False, separators=(",", ":")))
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"metadata[{i}] (id {ids[i]!r}): {e}") from None
        else:
            raise InvalidArgument(f"metadata[{i}] (id {ids[i]!r}) is {type(m).__name__}, not a dict")
    return out


def filter_text(f: FilterLike) -> Optional[str]:
    if f is None or isinstance(f, str):
        return f
    if isinstance(f, dict):
        return json.dumps(f)
    raise InvalidArgument(f"filter: expected a string or a dict, got {type(f).__name__}")


def check_search(k: int, mode: str, ef: Optional[int]) -> None:
    if mode not in MODES:
        raise InvalidArgument(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    if ef is not None and (not isinstance(ef, (int, np.integer)) or ef < 1):
        raise InvalidArgument(f"ef must be a positive integer, got {ef!r}")


def decode_record(r: Optional[Dict[str, Any]]) -> Optional[Record]:
    if r is not None and isinstance(r.get("metadata"), str):
        r["metadata"] = json.loads(r["metadata"])
    return r


class CollectionAPI:
    """The collection API both kinds of handle implement (embedded: ``Collection``; over
    HTTP: ``RemoteCollection``)."""

    name: str
    dim: int

    def _upsert_args(self, ids: Any, vectors: Any, texts: Any, metadata: Any) -> tuple:
        """Checked upsert arguments: ids, float32 vectors (or None), texts, metadata JSON."""
        ids = check_ids(ids)
        if not ids:
            raise InvalidArgument("upsert: no ids")
        v = None if vectors is None else as_matrix(vectors, self.dim, "vectors", rows=len(ids))
        t = None if texts is None else check_texts(texts, len(ids))
        m = None if metadata is None else metadata_json(metadata, ids)
        if v is None and t is None:
            raise InvalidArgument("upsert: give vectors, or texts to embed")
        return ids, v, t, m

    def get(self, ids: Union[str, Iterable[str]], vectors: bool = True):
        """Records by id, in order (``None`` where absent); one id gives one record."""
        if isinstance(ids, str):
            return self._get([ids], vectors)[0]
        return self._get(check_ids(ids), vectors)

    def search(self, queries: Any = None, *, texts: Optional[Sequence[str]] = None, k: int = 10,
               filter: FilterLike = None, mode: str = "vector", ef: Optional[int] = None,
               exact: bool = False, return_records: bool = False,
               include_vectors: bool = False, media: Any = None) -> SearchResult:
        """Searches with one or many queries.

        ``queries``: vectors ``[nq, dim]`` (or one ``[dim]``); ``texts``: query texts
        (embedded with MiniLM when no vectors are given; the keyword side of ``keyword``
        and ``hybrid``); ``media``: image or audio files (bytes or paths) for a collection
        made with ``modality="image"`` or ``"audio"``, encoded with its encoder ("more
        like this", search by voice). ``filter`` restricts by metadata; ``ef`` widens the
        graph walk (recall for speed); ``exact`` scans every record (ground truth)."""
        check_search(k, mode, ef)
        if media is not None:
            if queries is not None:
                raise InvalidArgument("search: give queries (vectors) or media, not both")
            if getattr(self, "modality", "text") not in ("image", "audio"):
                raise InvalidArgument(f"collection {self.name!r} has no image or audio encoder")
            queries = self._encode_media(media_bytes(media))
        q = None if queries is None else as_matrix(queries, self.dim, "queries")
        t = None if texts is None else [str(x) for x in check_texts(texts, None)]
        if q is None and t is None:
            raise InvalidArgument("search: give queries (vectors) or texts")
        if q is not None and t is not None and len(t) != q.shape[0]:
            raise InvalidArgument(f"{q.shape[0]} query vectors but {len(t)} texts")
        if mode != "vector" and t is None:
            raise InvalidArgument(f"{mode} search needs texts")
        return self._search(q, t, int(k), None if ef is None else int(ef), filter_text(filter), mode,
                            bool(exact), bool(return_records), bool(include_vectors))

    def to_pandas(self, vectors: bool = True):
        """Every live record as a pandas DataFrame (``vector`` holds float32 arrays;
        ``metadata`` dicts)."""
        table = self.to_arrow(vectors=vectors).read_all()
        metadata = [None if m is None else json.loads(m) for m in table.column("metadata").to_pylist()]
        df = table.drop_columns(["metadata"]).to_pandas()
        df["metadata"] = metadata
        return df

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} dim={self.dim}>"



def media_bytes(files: Any) -> List[bytes]:
    """Files as bytes: each item is ``bytes`` / ``bytearray`` / ``memoryview`` or a path
    (``str`` / ``os.PathLike``), read here; one item alone is taken as a list of one."""
    import os

    if isinstance(files, (bytes, bytearray, memoryview, str, os.PathLike)):
        files = [files]
    out: List[bytes] = []
    for i, f in enumerate(files):
        if isinstance(f, (bytes, bytearray, memoryview)):
            out.append(bytes(f))
        elif isinstance(f, (str, os.PathLike)):
            with open(os.fspath(f), "rb") as fh:
                out.append(fh.read())
        else:
            raise InvalidArgument(f"media[{i}]: expected bytes or a path, got {type(f).__name__}")
    return out
