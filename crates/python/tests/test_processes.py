"""Several processes on one data directory: one writer, readers beside it; a second
writer is refused with a clear error and changes nothing; forked children work."""

from __future__ import annotations

import multiprocessing as mp
import textwrap

import numpy as np
import pytest

import kernelize
from kernelize import errors

from conftest import run_py

READER = textwrap.dedent("""
    import sys, json, kernelize
    db = kernelize.open(sys.argv[1], read_only=True)
    c = db.collection("c")
    before = c.count()
    print(json.dumps({"count": before}), flush=True)
    sys.stdin.readline()          # the writer wrote more meanwhile
    stale = c.count()
    db.refresh()
    fresh = c.count()
    hit = c.search(c.get("late")["vector"], k=1).ids[0][0]
    try:
        c.upsert(["x"], [[0.0] * 8])
        wrote = "yes"
    except kernelize.errors.ReadOnlyError as e:
        wrote = str(e)
    print(json.dumps({"stale": stale, "fresh": fresh, "hit": hit, "wrote": wrote}), flush=True)
""")


def test_writer_and_reader_processes(tmp_path):
    import subprocess
    import sys
    import json

    path = tmp_path / "data"
    db = kernelize.open(path)
    c = db.create_collection("c", dim=8)
    rng = np.random.default_rng(0)
    c.upsert([f"a{i}" for i in range(100)], rng.normal(size=(100, 8)).astype(np.float32))
    c.flush()
    c.upsert([f"b{i}" for i in range(20)], rng.normal(size=(20, 8)).astype(np.float32))  # in the WAL only
    reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(reader.stdout.readline())
        assert first["count"] == 120  # segments and the WAL's acknowledged tail
        c.upsert(["late"], np.full((1, 8), 3.0, np.float32))
        c.compact()  # files the reader mapped go away: it keeps reading its snapshot
        reader.stdin.write("go\n")
        reader.stdin.flush()
        out, err = reader.communicate(timeout=60)
        second = json.loads(out)
    finally:
        reader.kill()
    assert second["stale"] == 120, err
    assert second["fresh"] == 121 and second["hit"] == "late"
    assert "read-only" in second["wrote"]
    db.close()


def test_second_writer_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "data"
    db = kernelize.open(path)
    db.create_collection("c", dim=4).upsert(["a"], np.ones((1, 4), np.float32))
    p = run_py(textwrap.dedent("""
        import sys, kernelize
        try:
            kernelize.open(sys.argv[1])
        except kernelize.errors.DirectoryLocked as e:
            print("LOCKED", e)
    """), str(path))
    assert "LOCKED" in p.stdout and "another kernelize process" in p.stdout and "read-only" in p.stdout, p
    # The same process opening it twice is refused as well.
    with pytest.raises(errors.DirectoryLocked):
        kernelize.open(path)
    assert db.collection("c").count() == 1
    db.close()
    p = run_py("import sys, kernelize; print(kernelize.open(sys.argv[1]).collection('c').count())", str(path))
    assert p.stdout.strip() == "1", p


def _child_search(path: str, q: list, out) -> None:
    db = kernelize.open(path, read_only=True)
    res = db.collection("c").search(np.asarray(q, np.float32), k=3)
    out.put([list(r) for r in res.ids])


def test_forked_child_searches_with_its_own_threads(tmp_path):
    path = tmp_path / "data"
    db = kernelize.open(path)
    c = db.create_collection("c", dim=8)
    v = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    c.upsert([f"r{i}" for i in range(300)], v)
    c.flush()
    expected = [list(r) for r in c.search(v[:4], k=3).ids]  # the parent's pool is running now
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_search, args=(str(path), v[:4].tolist(), q))
    p.start()
    got = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0 and got == expected
    db.close()
