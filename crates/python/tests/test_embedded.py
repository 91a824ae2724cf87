"""The engine in process: every call round-trips, bad input is refused with its place."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import kernelize
from kernelize import errors


@pytest.fixture
def db(tmp_path):
    d = kernelize.open(tmp_path / "data")
    yield d
    d.close()


@pytest.fixture
def coll(db, corpus):
    ids, vecs, texts, meta = corpus
    c = db.create_collection("docs", dim=16)
    c.upsert(ids, vecs, texts=texts, metadata=meta)
    return c


def exact_top(vecs, q, k):
    """Cosine ground truth."""
    a = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    b = q / np.linalg.norm(q, axis=1, keepdims=True)
    return np.argsort(-(b @ a.T), axis=1)[:, :k]


def test_collections_are_created_listed_reopened_and_dropped(tmp_path):
    path = tmp_path / "data"
    with kernelize.open(path) as db:
        c = db.create_collection("a", dim=4, metric="l2", quantization="int8", m=8, ef_construction=64)
        assert (c.name, c.dim, c.metric) == ("a", 4, "l2")
        db.create_collection("b", dim=2)
        assert db.get_or_create_collection("b", dim=2).dim == 2
        assert db.list_collections() == ["a", "b"]
        with pytest.raises(errors.AlreadyExists):
            db.create_collection("a", dim=4)
        c.upsert(["x"], np.ones((1, 4), np.float32))
        db.drop_collection("b")
        with pytest.raises(errors.NotFound):
            db.collection("b")
    with kernelize.open(path) as db:
        assert db.list_collections() == ["a"]
        assert db.collection("a").get("x")["vector"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert db.read_only is False


def test_upsert_get_delete_round_trip(coll, corpus):
    ids, vecs, texts, meta = corpus
    assert coll.count() == len(coll) == 500
    got = coll.get(["r0003", "missing", "r0499"])
    assert got[1] is None
    assert got[0]["id"] == "r0003" and got[0]["text"] == texts[3] and got[0]["metadata"] == meta[3]
    assert got[0]["vector"].dtype == np.float32
    np.testing.assert_array_equal(got[2]["vector"], vecs[499])
    assert "vector" not in coll.get(["r0003"], vectors=False)[0]
    assert coll.get("r0003")["id"] == "r0003"
    seq = coll.upsert(["r0003"], vecs[:1], texts=["replaced"], metadata=[None])
    assert seq > 0
    r = coll.get("r0003")
    assert r["text"] == "replaced" and r["metadata"] is None
    np.testing.assert_array_equal(r["vector"], vecs[0])
    assert coll.delete(["r0003", "never-there"]) > seq
    assert coll.get("r0003") is None and coll.count() == 499


def test_search_matches_exact_search_and_pads_short_results(coll, corpus):
    ids, vecs, _, _ = corpus
    rng = np.random.default_rng(1)
    q = vecs[rng.integers(0, 500, 50)] + 0.05 * rng.normal(size=(50, 16)).astype(np.float32)
    res = coll.search(q, k=10)
    assert res.ids.shape == (50, 10) and res.scores.shape == (50, 10) and res.scores.dtype == np.float32
    truth = exact_top(vecs, q, 10)
    recall = np.mean([len(set(res.ids[i]) & {ids[j] for j in truth[i]}) / 10 for i in range(50)])
    assert recall >= 0.95, recall
    ex = coll.search(q, k=10, exact=True)
    assert [list(r) for r in ex.ids] == [[ids[j] for j in t] for t in truth]
    # Scores are cosine similarities, best first.
    assert np.all(np.diff(ex.scores, axis=1) <= 1e-6)
    one = coll.search(q[0], k=3)  # one 1-D query
    assert one.ids.shape == (1, 3)
    assert list(one.ids[0]) == list(coll.search(q[:1], k=3).ids[0])
    # A filter that matches 2 records: the rest of the row is padding.
    res = coll.search(q[:2], k=5, filter="n < 2")
    assert sorted(res.ids[0][:2]) == ["r0000", "r0001"] and list(res.ids[0][2:]) == [None] * 3
    assert np.isnan(res.scores[0, 2:]).all()
    assert res.hits(0)[0][0] in ("r0000", "r0001")


def test_filters_text_and_json_forms_agree(coll, corpus):
    _, vecs, _, meta = corpus
    a = coll.search(vecs[:5], k=20, filter='cat = "b" and n >= 100', return_records=True)
    b = coll.search(vecs[:5], k=20, filter={"and": [{"field": "cat", "eq": "b"}, {"field": "n", "gte": 100}]})
    assert [list(r) for r in a.ids] == [list(r) for r in b.ids]
    for row in a.records:
        assert row and all(r["metadata"]["cat"] == "b" and r["metadata"]["n"] >= 100 for r in row)
    with pytest.raises(errors.InvalidArgument, match="unknown field \"colour\""):
        coll.search(vecs[:1], filter='colour = "red"')
    with pytest.raises(errors.InvalidArgument, match="filter"):
        coll.search(vecs[:1], filter="cat = = 1")


def test_keyword_and_hybrid_search(coll, corpus):
    ids, vecs, texts, _ = corpus
    res = coll.search(texts=["number 42"], k=3, mode="keyword", return_records=True)
    assert res.ids[0][0] == "r0042" and "42" in res.records[0][0]["text"]
    res = coll.search(vecs[42:43], texts=["number 42"], k=5, mode="hybrid")
    assert res.ids[0][0] == "r0042"
    with pytest.raises(errors.InvalidArgument, match="keyword search needs texts"):
        coll.search(vecs[:1], mode="keyword")
    with pytest.raises(errors.InvalidArgument, match="mode"):
        coll.search(vecs[:1], mode="fuzzy")


def test_texts_are_embedded_with_minilm(db):
    c = db.create_collection("words", dim=384)
    texts = ["a small cat sleeps", "the stock market fell", "a kitten is napping", "bonds and equities"]
    c.upsert(["cat", "market", "kitten", "bonds"], texts=texts)
    v = kernelize.embed(texts)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(c.get("kitten")["vector"], v[2], atol=1e-6)
    res = c.search(texts=["sleeping kitty"], k=2)
    assert set(res.ids[0]) == {"cat", "kitten"}
    assert kernelize.embed([]).shape == (0, 384)
    with pytest.raises(errors.InvalidArgument, match="texts are embedded to 384 dims"):
        db.create_collection("small", dim=8).upsert(["a"], texts=["x"])


def test_embeddings_match_sentence_transformers_reference():
    from pathlib import Path

    fixtures = Path(__file__).resolve().parents[2] / "embed" / "tests" / "fixtures"
    ref = json.loads((fixtures / "reference.json").read_text())
    texts = [t["text"] if isinstance(t, dict) else t for t in ref["texts"]][:64]
    expected = np.load(fixtures / "reference.npy")[: len(texts)]
    got = kernelize.embed(texts)
    cos = np.sum(got * expected, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cos.min() >= 0.999, cos.min()


def test_dtype_shape_and_value_errors_say_what_and_where(db):
    c = db.create_collection("v", dim=3)
    # float64 is converted; the stored values are the float32 ones.
    c.upsert(["d"], np.array([[0.1, 0.2, 0.3]], dtype=np.float64))
    np.testing.assert_array_equal(c.get("d")["vector"], np.array([0.1, 0.2, 0.3], np.float32))
    assert c.search(np.array([[0.1, 0.2, 0.3]]), k=1).ids[0][0] == "d"
    c.upsert(["l"], [[1, 2, 3.5]])  # nested lists of floats
    with pytest.raises(errors.InvalidArgument, match="dtype int64 is not a float type"):
        c.upsert(["i"], np.ones((1, 3), dtype=np.int64))
    with pytest.raises(errors.InvalidArgument, match=r"shape \(1, 4\): the collection has dim 3"):
        c.upsert(["w"], np.ones((1, 4), np.float32))
    bad = np.ones((3, 3), np.float32)
    bad[2, 1] = np.nan
    with pytest.raises(errors.InvalidArgument, match=r"vectors\[2, 1\] is nan"):
        c.upsert(["a", "b", "c"], bad)
    with pytest.raises(errors.InvalidArgument, match=r"queries\[0, 0\] is inf"):
        c.search(np.array([[np.inf, 0, 0]], np.float32))
    with pytest.raises(errors.InvalidArgument, match="not finite"):  # float64 past float32's range
        c.upsert(["big"], np.array([[1e300, 0, 0]]))
    with pytest.raises(errors.InvalidArgument, match="3-D|2-D"):
        c.upsert(["a"], np.ones((1, 1, 3), np.float32))
    with pytest.raises(errors.InvalidArgument, match="2 rows for 3 ids"):
        c.upsert(["a", "b", "c"], np.ones((2, 3), np.float32))
    with pytest.raises(errors.InvalidArgument, match=r"ids\[1\] is int"):
        c.upsert(["a", 7], np.ones((2, 3), np.float32))
    with pytest.raises(errors.InvalidArgument, match=r"metadata\[0\] \(id 'a'\)"):
        c.upsert(["a"], np.ones((1, 3), np.float32), metadata=[{"x": float("nan")}])
    with pytest.raises(errors.InvalidArgument, match="texts has 1 entries for 2 ids"):
        c.upsert(["a", "b"], np.ones((2, 3), np.float32), texts=["one"])
    with pytest.raises(errors.InvalidArgument, match="k must be"):
        c.search(np.ones((1, 3), np.float32), k=0)
    # Non-contiguous float32 views are copied, not refused.
    wide = np.ones((2, 6), np.float32)[:, ::2]
    c.upsert(["s1", "s2"], wide)
    assert c.count() == 4
    # Errors are Python exceptions of the usual families too.
    with pytest.raises(ValueError):
        c.upsert(["x"], np.ones((1, 5), np.float32))
    with pytest.raises(LookupError):
        db.collection("nope")


def test_large_upsert_is_split_into_atomic_batches_and_all_acknowledged(db):
    c = db.create_collection("big", dim=1024)
    n = 12_000  # 49 MB of vectors: more than one WAL frame
    v = np.random.default_rng(3).normal(size=(n, 1024)).astype(np.float32)
    c.upsert([f"b{i}" for i in range(n)], v)
    assert c.count() == n
    np.testing.assert_array_equal(c.get("b11999")["vector"], v[-1])


def test_arrow_stream_and_pandas(coll, corpus):
    ids, vecs, texts, meta = corpus
    reader = coll.to_arrow(batch_size=128)
    assert isinstance(reader, pa.RecordBatchReader)
    batches = list(reader)
    assert [b.num_rows for b in batches] == [128, 128, 128, 116]
    table = pa.Table.from_batches(batches)
    assert table.column_names == ["id", "vector", "text", "metadata"]
    assert table.schema.field("vector").type == pa.list_(pa.field("item", pa.float32(), nullable=False), 16)
    by_id = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    assert sorted(by_id) == sorted(ids)
    flat = table.column("vector").combine_chunks().values.to_numpy().reshape(-1, 16)
    np.testing.assert_array_equal(flat[by_id["r0123"]], vecs[123])
    df = coll.to_pandas()
    row = df[df.id == "r0007"].iloc[0]
    assert row.text == texts[7] and row.metadata == meta[7]
    assert list(coll.to_arrow(vectors=False).read_all().column_names) == ["id", "text", "metadata"]
    stream = coll.arrow_stream()
    pa.RecordBatchReader.from_stream(stream).read_all()
    with pytest.raises(errors.InvalidArgument, match="already consumed"):
        pa.RecordBatchReader.from_stream(stream)


def test_stats_flush_compact_and_index(coll, corpus):
    _, vecs, _, _ = corpus
    s = coll.stats()
    assert s["records"] == 500 and s["memtable_entries"] == 500 and s["segments"] == 0
    coll.flush()
    assert coll.stats()["segments"] == 1
    assert coll.build_index() == 1 and coll.build_index() == 0
    coll.upsert(["late"], vecs[:1])
    coll.flush()
    coll.compact()
    s = coll.stats()
    assert s["segments"] == 1 and s["records"] == 501
    assert coll.search(vecs[:1], k=2, exact=True).ids[0][0] in ("r0000", "late")


def test_kernel_build_open_verify_and_search(coll, corpus, tmp_path):
    ids, vecs, _, _ = corpus
    pub = kernelize.generate_signing_key(tmp_path / "signer")
    manifest = coll.build_kernel(tmp_path / "docs.kernel", tmp_path / "signer.key", seed=5)
    assert manifest["rows"] <= 500 and manifest["ids"] == 500
    k = kernelize.Kernel.open(tmp_path / "docs.kernel", pubkey=pub)
    assert k.signature_verified and k.dim == 16 and k.manifest["source"]["collection"] == "docs"
    q = vecs[:40]
    res = k.search(q, k=10, return_records=True)
    truth = exact_top(vecs, q, 10)
    # A row stands for every id it consolidated: count hits through provenance.
    recall = np.mean([len({i for h in res.records[r] for i in h["ids"]} & {ids[j] for j in truth[r]}) / 10
                      for r in range(40)])
    assert recall >= 0.9, recall
    assert k.search(q[:1], k=5, filter='cat = "a"', return_records=True).records[0][0]["metadata"]["cat"] == "a"
    other = kernelize.generate_signing_key(tmp_path / "other")
    with pytest.raises(errors.SignatureError):
        kernelize.Kernel.open(tmp_path / "docs.kernel", pubkey=other)
    data = bytearray((tmp_path / "docs.kernel").read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "bad.kernel").write_bytes(bytes(data))
    with pytest.raises(errors.CorruptionError, match="bad.kernel"):
        kernelize.Kernel.open(tmp_path / "bad.kernel", pubkey=pub)
    with pytest.raises(errors.NotFound):
        kernelize.Kernel.open(tmp_path / "absent.kernel")
    with pytest.raises(errors.InvalidArgument, match="pubkey"):
        kernelize.Kernel.open(tmp_path / "docs.kernel", pubkey="zz")


def test_threads_setting_and_closed_handles(tmp_path, corpus):
    _, vecs, _, _ = corpus
    kernelize.set_num_threads(1)
    assert kernelize.get_num_threads() == 1
    kernelize.set_num_threads(0)
    assert kernelize.get_num_threads() >= 1
    db = kernelize.open(tmp_path / "d")
    c = db.create_collection("c", dim=16)
    c.upsert(["a"], vecs[:1])
    db.close()
    with pytest.raises(errors.InvalidArgument, match="is closed"):
        c.count()
    with kernelize.open(tmp_path / "d") as again:  # the lock went with close()
        assert again.collection("c").count() == 1
