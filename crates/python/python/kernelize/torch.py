"""PyTorch datasets over a collection (``pip install torch`` first; kernelize does not
depend on it).

Both datasets work with ``DataLoader(num_workers > 1)`` under either start method: they
carry only where the data is (a data directory or a server URL, a collection name), and
each worker process opens its own handle on first use — read-only for a data directory,
so workers read beside a writer and never block it. A dataset reads the collection as it
was when the dataset was made (map-style: that snapshot's ids) or when each epoch's
iteration starts in a worker (iterable).

Items are dicts: ``id``, ``vector`` (a float32 tensor), ``text``, ``metadata``; batch
them with :func:`collate` (the default collate cannot batch ``None`` text or metadata).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ._client import Client
from ._embedded import Database

Source = Union[str, os.PathLike]


class _Handle:
    """Where the records are, and a handle opened lazily in each process."""

    def __init__(self, source: Source, collection: str, api_key: Optional[str]) -> None:
        self.source = os.fspath(source)
        self.collection = collection
        self.api_key = api_key
        self._coll: Any = None
        self._pid: Optional[int] = None

    @property
    def remote(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    def get(self) -> Any:
        if self._coll is None or self._pid != os.getpid():
            if self.remote:
                self._coll = Client(self.source, self.api_key).collection(self.collection)
            else:
                self._coll = Database(self.source, read_only=True).collection(self.collection)
            self._pid = os.getpid()
        return self._coll

    def __getstate__(self) -> Dict[str, Any]:
        return {"source": self.source, "collection": self.collection, "api_key": self.api_key,
                "_coll": None, "_pid": None}


def _item(r: Dict[str, Any], vectors: bool) -> Dict[str, Any]:
    out = {"id": r["id"], "text": r.get("text"), "metadata": r.get("metadata")}
    if vectors:
        out["vector"] = torch.from_numpy(np.asarray(r["vector"], dtype=np.float32))
    return out


class CollectionDataset(Dataset):
    """Map-style: item ``i`` is the record with the ``i``-th id (``ids`` given, or every
    id of the collection in key order when the dataset is made)."""

    def __init__(self, source: Source, collection: str, *, ids: Optional[Sequence[str]] = None,
                 vectors: bool = True, api_key: Optional[str] = None,
                 transform: Optional[Callable[[Dict[str, Any]], Any]] = None) -> None:
        self._h = _Handle(source, collection, api_key)
        self.vectors = vectors
        self.transform = transform
        if ids is None:
            reader = self._h.get().to_arrow(vectors=False)
            ids = [i for batch in reader for i in batch.column(0).to_pylist()]
        self.ids: List[str] = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def _out(self, r: Optional[Dict[str, Any]], i: int) -> Any:
        if r is None:
            raise IndexError(f"record {self.ids[i]!r} (item {i}) is no longer in the collection")
        item = _item(r, self.vectors)
        return self.transform(item) if self.transform else item

    def __getitem__(self, i: int) -> Any:
        if i < 0:
            i += len(self.ids)
        if not 0 <= i < len(self.ids):
            raise IndexError(f"item {i} of {len(self.ids)}")
        return self._out(self._h.get().get([self.ids[i]], vectors=self.vectors)[0], i)

    def __getitems__(self, indices: List[int]) -> List[Any]:
        """A whole batch in one call (the DataLoader uses it when present)."""
        recs = self._h.get().get([self.ids[i] for i in indices], vectors=self.vectors)
        return [self._out(r, i) for r, i in zip(recs, indices)]


class CollectionIterableDataset(IterableDataset):
    """Iterable: streams the collection in key order, each record to exactly one reader.

    The stream is split into ``num_workers × world_size`` shards (record ``n`` goes to
    shard ``n mod shards``): by DataLoader worker, and by distributed rank — ``rank`` and
    ``world_size`` given, else ``torch.distributed``'s when initialized, else one."""

    def __init__(self, source: Source, collection: str, *, vectors: bool = True, api_key: Optional[str] = None,
                 rank: Optional[int] = None, world_size: Optional[int] = None, batch_size: int = 1024,
                 transform: Optional[Callable[[Dict[str, Any]], Any]] = None) -> None:
        self._h = _Handle(source, collection, api_key)
        self.vectors = vectors
        self.rank, self.world_size = rank, world_size
        self.batch_size = batch_size
        self.transform = transform

    def _shard(self) -> tuple:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            dist = torch.distributed
            if dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            else:
                rank, world = 0, 1
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def __iter__(self) -> Iterator[Any]:
        shard, shards = self._shard()
        n = 0
        reader = self._h.get().to_arrow(batch_size=self.batch_size, vectors=self.vectors)
        for batch in reader:
            rows = batch.num_rows
            take = [i for i in range(rows) if (n + i) % shards == shard]
            n += rows
            if not take:
                continue
            ids = batch.column("id").to_pylist()
            texts = batch.column("text").to_pylist()
            metas = batch.column("metadata").to_pylist()
            if self.vectors:
                col = batch.column("vector")
                dim = col.type.list_size
                mat = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
            for i in take:
                item: Dict[str, Any] = {"id": ids[i], "text": texts[i],
                                        "metadata": None if metas[i] is None else json.loads(metas[i])}
                if self.vectors:
                    item["vector"] = torch.from_numpy(mat[i].copy())
                yield self.transform(item) if self.transform else item


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Batches dataset items: ``vector`` stacked into ``[batch, dim]``; ``id``, ``text``
    and ``metadata`` as lists."""
    out: Dict[str, Any] = {"id": [it["id"] for it in items], "text": [it.get("text") for it in items],
                           "metadata": [it.get("metadata") for it in items]}
    if items and "vector" in items[0]:
        out["vector"] = torch.stack([it["vector"] for it in items])
    return out


__all__ = ["CollectionDataset", "CollectionIterableDataset", "collate"]
