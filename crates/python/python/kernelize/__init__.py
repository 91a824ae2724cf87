"""Kernelize from Python: the engine in process (numpy in and out, Arrow streams), the
same collection API against a Kernelize server, knowledge kernels, MiniLM embeddings and
PyTorch datasets (``kernelize.torch``).

>>> import kernelize, numpy as np
>>> db = kernelize.open("data")                                  # doctest: +SKIP
>>> docs = db.create_collection("docs", dim=384)                 # doctest: +SKIP
>>> docs.upsert(["a", "b"], texts=["a cat", "a dog"])             # doctest: +SKIP
>>> docs.search(texts=["kitten"], k=1).ids                        # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np

from . import errors
from ._client import Client, RemoteCollection, connect
from ._common import SearchResult
from ._embedded import Collection, Database, Kernel
from ._native import __version__, get_num_threads, set_num_threads
from ._native import generate_signing_key as _generate_signing_key
from ._native import embed as _embed
from ._native import embed_media as _embed_media
from .errors import KernelizeError


def open(path: Union[str, os.PathLike], read_only: bool = False, durability: str = "always") -> Database:
    """Opens (creating when writable) a data directory in this process.

    ``read_only=True`` reads beside another process's writer (no lock, a snapshot as of
    the open; :meth:`Database.refresh` for later writes). ``durability``: ``always``
    acknowledges a write once fsynced (survives power loss), ``buffered`` once the OS has
    it (survives a crash of this process)."""
    return Database(path, read_only=read_only, durability=durability)


def embed(texts) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, ``[n, 384]`` float32, unit length (as
    sentence-transformers computes them), on this process's threads."""
    from ._common import check_texts

    return _embed([str(t) for t in check_texts(texts, None)])


def embed_media(files, modality: str) -> np.ndarray:
    """Image files (JPEG, PNG, WebP: EfficientNet-Lite0, ``[n, 1280]``) or audio files
    (WAV, FLAC, MP3, Ogg Vorbis: Resemblyzer's voice encoder, ``[n, 256]``) as unit-length
    float32 vectors, on this process's threads. ``files``: bytes or paths;
    ``modality``: ``image`` or ``audio``."""
    from ._common import media_bytes

    return _embed_media(media_bytes(files), str(modality))


def generate_signing_key(stem: Union[str, os.PathLike]) -> str:
    """Makes an ed25519 kernel signing key: ``<stem>.key`` (mode 0600) and
    ``<stem>.pub``; returns the public key as 64 hex digits."""
    return _generate_signing_key(os.fspath(stem))


__all__ = ["open", "connect", "embed", "embed_media", "Database", "Collection", "Client", "RemoteCollection", "Kernel",
           "SearchResult", "errors", "KernelizeError", "set_num_threads", "get_num_threads",
           "generate_signing_key", "__version__"]
