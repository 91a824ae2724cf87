"""Image and audio collections from Python: embedded and over HTTP, the same encoders,
search by image and by voice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kernelize
from kernelize import errors

from conftest import ADMIN_KEY

FIXTURES = Path(__file__).resolve().parents[2] / "media" / "tests" / "fixtures"


def files(kind, exts, n):
    found = sorted(p for p in (FIXTURES / kind).iterdir() if p.suffix.lstrip(".") in exts and p.stat().st_size < 300_000)
    assert len(found) >= n, f"need {n} fixtures in {FIXTURES / kind}"
    return found[:n]


def test_embedded_image_collection_finds_each_image_first(tmp_path):
    images = files("images", {"jpg", "png", "webp"}, 4)
    vecs = kernelize.embed_media(images, "image")
    assert vecs.shape == (4, 1280) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    with kernelize.open(tmp_path / "data") as db:
        c = db.create_collection("photos", modality="image")
        assert (c.dim, c.modality) == (1280, "image")
        c.upsert([p.name for p in images], vecs)
        res = c.search(media=[p.read_bytes() for p in images], k=2)
        assert [row[0] for row in res.ids] == [p.name for p in images]
        assert res.scores[:, 0].min() > 0.999
        with pytest.raises(errors.InvalidArgument, match="media\\[0\\]"):
            c.search(media=[b"not an image"])
        plain = db.create_collection("plain", dim=4)
        with pytest.raises(errors.InvalidArgument, match="no image or audio encoder"):
            plain.search(media=[images[0]])


def test_voice_search_over_http_matches_embedded(tmp_path, serve):
    clips = files("audio", {"wav", "flac"}, 3)
    local = kernelize.embed_media(clips, "audio")
    assert local.shape == (3, 256)
    server = serve(tmp_path / "data")
    remote = kernelize.connect(server.url, api_key=ADMIN_KEY)
    c = remote.create_collection("voices", modality="audio")
    assert (c.dim, c.modality) == (256, "audio")
    np.testing.assert_allclose(remote.embed_media(clips, "audio"), local, atol=1e-5)
    c.upsert([p.name for p in clips], local)
    res = c.search(media=clips[1], k=1)
    assert res.ids[0][0] == clips[1].name
