"""PyTorch DataLoaders with worker processes read every record exactly once per epoch."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import kernelize

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from kernelize.torch import CollectionDataset, CollectionIterableDataset, collate  # noqa: E402

from conftest import ADMIN_KEY  # noqa: E402

N = 1000


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data"
    rng = np.random.default_rng(11)
    v = rng.normal(size=(N, 8)).astype(np.float32)
    ids = [f"d{i:05d}" for i in range(N)]
    db = kernelize.open(path)  # the writer stays open while the workers read
    c = db.create_collection("train", dim=8)
    c.upsert(ids[:600], v[:600], texts=[f"t{i}" for i in range(600)], metadata=[{"i": i} for i in range(600)])
    c.flush()
    c.upsert(ids[600:], v[600:], metadata=[{"i": i} for i in range(600, N)])  # no texts: None
    yield path, dict(zip(ids, v))
    db.close()


def check_epoch(batches, vectors):
    seen = Counter()
    for b in batches:
        assert b["vector"].dtype == torch.float32 and b["vector"].shape[1] == 8
        for rid, vec, meta, text in zip(b["id"], b["vector"], b["metadata"], b["text"]):
            seen[rid] += 1
            np.testing.assert_array_equal(vec.numpy(), vectors[rid])
            assert meta["i"] == int(rid[1:])
            assert (text is None) == (meta["i"] >= 600)
    assert len(seen) == N and set(seen.values()) == {1}, "every record exactly once"


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_map_style_dataset_with_two_workers(data, start):
    path, vectors = data
    ds = CollectionDataset(path, "train")
    assert len(ds) == N and ds[5]["id"] == ds.ids[5] and isinstance(ds[5]["vector"], torch.Tensor)
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=2, collate_fn=collate,
                        multiprocessing_context=start, persistent_workers=True)
    for _ in range(2):  # two epochs on the same workers
        check_epoch(loader, vectors)
    with pytest.raises(IndexError):
        ds[N]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_iterable_dataset_with_two_workers(data, start):
    path, vectors = data
    ds = CollectionIterableDataset(path, "train", batch_size=100)
    loader = DataLoader(ds, batch_size=50, num_workers=2, collate_fn=collate, multiprocessing_context=start)
    for _ in range(2):
        check_epoch(loader, vectors)


def test_iterable_dataset_shards_by_rank_and_worker(data):
    path, vectors = data
    parts = []
    for rank in range(2):
        ds = CollectionIterableDataset(path, "train", rank=rank, world_size=2, batch_size=128)
        parts.append(list(DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate)))
    check_epoch([b for p in parts for b in p], vectors)
    sizes = [sum(len(b["id"]) for b in p) for p in parts]
    assert sizes == [N // 2, N // 2]


def test_dataset_over_http(data, serve, tmp_path):
    path, vectors = data
    # A server needs the directory to itself: serve a copy made through the Arrow stream.
    copy = tmp_path / "served"
    with kernelize.open(path, read_only=True) as src, kernelize.open(copy) as dst:
        table = src.collection("train").to_arrow().read_all()
        c = dst.create_collection("train", dim=8)
        import json

        c.upsert(table.column("id").to_pylist(),
                 table.column("vector").combine_chunks().values.to_numpy().reshape(-1, 8),
                 texts=table.column("text").to_pylist(),
                 metadata=[json.loads(m) for m in table.column("metadata").to_pylist()])
    server = serve(copy)
    ds = CollectionDataset(server.url, "train", api_key=ADMIN_KEY)
    check_epoch(DataLoader(ds, batch_size=100, num_workers=2, collate_fn=collate), vectors)
