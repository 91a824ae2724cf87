"""The same API over a real `kernelize serve`: same answers as the embedded engine on the
same data, typed errors from the server's codes, retries."""

from __future__ import annotations

import http.server
import threading
import time

import numpy as np
import pytest

import kernelize
from kernelize import errors

from conftest import ADMIN_KEY


@pytest.fixture
def shared_dir(tmp_path, corpus):
    """A data directory written in process (indexes built), then closed for the server."""
    ids, vecs, texts, meta = corpus
    path = tmp_path / "data"
    with kernelize.open(path) as db:
        c = db.create_collection("docs", dim=16)
        c.upsert(ids, vecs, texts=texts, metadata=meta)
        c.flush()
        c.build_index()
        c.upsert(["tail-1", "tail-2"], vecs[:2] * 0.5, texts=["in the memtable", "also"])  # WAL, not a segment
    return path


def rows(result):
    return [[i for i in r if i is not None] for r in result.ids]


def test_embedded_and_http_give_the_same_results(shared_dir, serve, corpus):
    ids, vecs, texts, meta = corpus
    server = serve(shared_dir)
    remote = kernelize.connect(server.url, api_key=ADMIN_KEY)
    local_db = kernelize.open(shared_dir, read_only=True)
    local = local_db.collection("docs")
    rc = remote.collection("docs")
    assert (rc.name, rc.dim, rc.metric) == ("docs", 16, "cosine")
    assert remote.list_collections() == local_db.list_collections() == ["docs"]
    assert rc.count() == local.count() == 502
    q = vecs[::25] + 0.01
    for kw in [dict(k=10), dict(k=7, ef=40), dict(k=10, filter='cat = "c"'),
               dict(k=10, filter={"field": "n", "lt": 250}), dict(k=5, exact=True)]:
        a, b = local.search(q, **kw), rc.search(q, **kw)
        assert rows(a) == rows(b), kw
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    for kw in [dict(mode="keyword"), dict(mode="hybrid")]:
        a = local.search(q[:3], texts=["apple river", "frost 40", "memtable"], k=5, **kw)
        b = rc.search(q[:3], texts=["apple river", "frost 40", "memtable"], k=5, **kw)
        assert rows(a) == rows(b), kw
    a = local.search(q[:2], k=3, return_records=True, include_vectors=True)
    b = rc.search(q[:2], k=3, return_records=True, include_vectors=True)
    for ra, rb in zip(a.records, b.records):
        for x, y in zip(ra, rb):
            assert (x["id"], x["text"], x["metadata"]) == (y["id"], y["text"], y["metadata"])
            np.testing.assert_array_equal(x["vector"], y["vector"])
    got_l, got_r = local.get(["r0001", "nope", "tail-2"]), rc.get(["r0001", "nope", "tail-2"])
    assert got_l[1] is None and got_r[1] is None
    for x, y in zip(got_l[::2], got_r[::2]):
        assert x.keys() == y.keys() and x["metadata"] == y["metadata"]
        np.testing.assert_array_equal(x["vector"], y["vector"])
    ta, tb = local.to_arrow().read_all(), rc.to_arrow().read_all()
    assert ta.schema == tb.schema
    assert ta.sort_by("id").equals(tb.sort_by("id"))
    assert local.to_pandas(vectors=False).equals(rc.to_pandas(vectors=False))
    np.testing.assert_allclose(remote.embed(["a cat"]), kernelize.embed(["a cat"]), atol=1e-5)
    local_db.close()


def test_http_writes_are_seen_by_an_embedded_reader_after_refresh(shared_dir, serve):
    server = serve(shared_dir)
    remote = kernelize.connect(server.url, api_key=ADMIN_KEY)
    reader = kernelize.open(shared_dir, read_only=True)
    c = remote.create_collection("fresh", dim=4, metric="l2")
    with pytest.raises(errors.NotFound):
        reader.collection("fresh")  # not there when the reader opened
    n = 2500  # three requests
    v = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
    seq = c.upsert([f"x{i}" for i in range(n)], v, metadata=[{"i": i} for i in range(n)])
    assert seq > 0 and c.count() == n
    assert c.delete(["x0", "x1"]) > seq
    reader.refresh()
    local = reader.collection("fresh")
    assert local.count() == n - 2
    assert local.get("x7")["metadata"] == {"i": 7}
    assert rows(local.search(v[10:12], k=1)) == rows(c.search(v[10:12], k=1)) == [["x10"], ["x11"]]
    reader.close()


def test_server_errors_are_typed(shared_dir, serve):
    server = serve(shared_dir)
    remote = kernelize.connect(server.url, api_key=ADMIN_KEY)
    with pytest.raises(errors.NotFound) as e:
        remote.collection("absent")
    assert e.value.status == 404 and e.value.code == "not_found" and e.value.request_id
    with pytest.raises(errors.AlreadyExists):
        remote.create_collection("docs", dim=16)
    rc = remote.collection("docs")
    with pytest.raises(errors.InvalidArgument, match="dim 16"):
        rc.search(np.ones((1, 3), np.float32))  # checked before sending
    with pytest.raises(errors.InvalidArgument, match="unknown field"):
        rc.search(np.ones((1, 16), np.float32), filter='colour = "red"')  # refused by the server
    with pytest.raises(errors.Unauthenticated):
        kernelize.connect(server.url, api_key="kz_nope00000000_" + "x" * 43).list_collections()
    # A reader-scoped key may search but not write.
    key = remote.request("POST", "/v1/keys", {"name": "ro", "role": "reader"})["key"]
    ro = kernelize.connect(server.url, api_key=key).collection("docs")
    assert ro.count() == 502
    with pytest.raises(errors.PermissionDenied):
        ro.upsert(["z"], np.ones((1, 16), np.float32))
    with pytest.raises(errors.ConnectionFailed):
        kernelize.connect("http://127.0.0.1:9", retries=1, backoff=0.01).list_collections()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) twice, then 200: a fault-injecting stand-in server."""

    calls = 0

    def do_GET(self):  # noqa: N802
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        type(self).calls += 1
        if type(self).calls <= 2:
            body, status = b'{"code":"overloaded","message":"busy","request_id":"r1"}', 503
        else:
            body, status = b'{"collections":[{"name":"a"}]}', 200
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            if status == 503:
                self.send_header("retry-after", "0")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout case)

    def log_message(self, *a):
        pass


def test_client_retries_503_then_gives_up_with_the_servers_error():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert kernelize.connect(url, retries=3).list_collections() == ["a"]
        assert _Flaky.calls == 3
        _Flaky.calls = 0
        with pytest.raises(errors.Unavailable) as e:
            kernelize.connect(url, retries=1).list_collections()
        assert e.value.code == "overloaded" and e.value.request_id == "r1" and _Flaky.calls == 2
        slow = kernelize.connect(url + "/slow", timeout=0.2, retries=1, backoff=0.01)
        t = time.monotonic()
        with pytest.raises(errors.Timeout, match="no answer within 0.2 s"):
            slow.list_collections()
        assert time.monotonic() - t < 1.5  # two tries of 0.2 s, not the handler's full second each
    finally:
        srv.shutdown()
        srv.server_close()
