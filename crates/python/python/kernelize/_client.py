"""The same collection API over a Kernelize server's REST API: ``kernelize.connect``.

Standard library only (``http.client``): one keep-alive connection per thread, a timeout
per request, retries with exponential backoff and jitter on connection failures and on
the server's ``429`` / ``503`` answers (honouring ``Retry-After``), and errors raised as
the classes of :mod:`kernelize.errors` from the server's ``{code, message, request_id}``.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import socket
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from ._common import CollectionAPI, Record, SearchResult, check_ids, check_texts, ids_array, media_bytes
from .errors import ConnectionFailed, InvalidArgument, KernelizeError, Timeout, from_server

#: Records per upsert request (the server's default limit is 10,000 and 64 MiB).
UPSERT_BATCH = 1000
#: Ids per delete request.
DELETE_BATCH = 10_000
#: Records per page when streaming a collection.
SCAN_PAGE = 1000
#: Largest response body the client reads (a misbehaving server cannot exhaust memory).
MAX_RESPONSE_BYTES = 256 << 20
RETRY_STATUSES = {429, 502, 503, 504}


class Client:
    """A connection to a Kernelize server.

    ``api_key`` (``kz_…``) or ``token`` authenticates; ``timeout`` bounds each request
    (seconds); ``retries`` is how many times a failed request is tried again (connection
    errors, 429, 503), waiting ``backoff · 2^attempt`` seconds with jitter, or the
    server's ``Retry-After``. ``workers`` queries of a batch search run concurrently."""

    def __init__(self, url: str, api_key: Optional[str] = None, *, token: Optional[str] = None,
                 timeout: float = 30.0, retries: int = 3, backoff: float = 0.2, workers: int = 4,
                 verify: bool = True) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InvalidArgument(f"url {url!r}: expected http(s)://host[:port]")
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port = u.scheme, u.hostname, u.port
        self._base = u.path.rstrip("/")
        secret = token or api_key
        self._headers = {"content-type": "application/json", "accept": "application/json",
                         "user-agent": "kernelize-python"}
        if secret:
            self._headers["authorization"] = f"Bearer {secret}"
        self.timeout, self.retries, self.backoff, self.workers = timeout, retries, backoff, max(1, workers)
        self._ssl = None if verify else ssl._create_unverified_context()
        self._local = threading.local()

    # -- transport ---------------------------------------------------------------------

    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            if self._scheme == "https":
                c = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._ssl)
            else:
                c = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = c
        return c

    def _drop_conn(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: Any = None, query: Optional[Dict[str, Any]] = None,
                idempotent: bool = True) -> Any:
        """One API call: the decoded JSON answer, or the matching exception."""
        url = self._base + path
        if query:
            q = {k: ("true" if v is True else "false" if v is False else v) for k, v in query.items() if v is not None}
            url += "?" + urllib.parse.urlencode(q)
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        attempt = 0
        while True:
            try:
                c = self._conn()
                c.request(method, url, body=payload, headers=self._headers)
                resp = c.getresponse()
                raw = resp.read(MAX_RESPONSE_BYTES + 1)
                if len(raw) > MAX_RESPONSE_BYTES:
                    self._drop_conn()
                    raise KernelizeError(f"{method} {path}: response larger than {MAX_RESPONSE_BYTES} bytes")
            except (socket.timeout, TimeoutError) as e:
                self._drop_conn()
                err: KernelizeError = Timeout(f"{method} {path}: no answer within {self.timeout} s ({e})")
                if idempotent and attempt < self.retries:
                    attempt += 1
                    time.sleep(self._delay(attempt, None))
                    continue
                raise err from None
            except (OSError, http.client.HTTPException) as e:
                self._drop_conn()
                if idempotent and attempt < self.retries:
                    attempt += 1
                    time.sleep(self._delay(attempt, None))
                    continue
                raise ConnectionFailed(f"{method} {self.url}{path}: {e}") from None
            if resp.status < 400:
                ctype = resp.getheader("content-type") or ""
                return json.loads(raw) if raw and "json" in ctype else raw
            try:
                doc = json.loads(raw)
                code, message, rid = doc.get("code"), doc.get("message", ""), doc.get("request_id")
            except (ValueError, AttributeError):
                code, message, rid = None, raw[:400].decode(errors="replace"), None
            retry_after = _retry_after(resp.getheader("retry-after"))
            if resp.status in RETRY_STATUSES and attempt < self.retries and (idempotent or resp.status == 429):
                attempt += 1
                time.sleep(self._delay(attempt, retry_after))
                continue
            raise from_server(resp.status, code, f"{method} {path}: {message}", rid, retry_after)

    def _delay(self, attempt: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, 60.0)
        return self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random())

    # -- data directory ----------------------------------------------------------------

    def create_collection(self, name: str, dim: Optional[int] = None, metric: str = "cosine", *,
                          quantization: str = "none", m: int = 16, ef_construction: int = 200,
                          modality: Optional[str] = None) -> "RemoteCollection":
        body: Dict[str, Any] = {"name": name, "metric": metric, "quantization": quantization, "m": int(m),
                                "ef_construction": int(ef_construction)}
        if dim is not None:
            body["dim"] = int(dim)
        if modality is not None:
            body["modality"] = modality
        info = self.request("POST", "/v1/collections", body, idempotent=False)
        return RemoteCollection(self, info)

    def collection(self, name: str) -> "RemoteCollection":
        return RemoteCollection(self, self.request("GET", f"/v1/collections/{_seg(name)}"))

    def get_or_create_collection(self, name: str, dim: int, metric: str = "cosine", **kw: Any) -> "RemoteCollection":
        if name in self.list_collections():
            return self.collection(name)
        return self.create_collection(name, dim, metric, **kw)

    def list_collections(self) -> List[str]:
        return [c["name"] for c in self.request("GET", "/v1/collections")["collections"]]

    def drop_collection(self, name: str) -> None:
        self.request("DELETE", f"/v1/collections/{_seg(name)}", idempotent=False)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds texts on the server (MiniLM); ``[n, 384]`` float32."""
        texts = [str(t) for t in check_texts(texts, None)]
        out = self.request("POST", "/v1/embed", {"texts": texts})
        return np.asarray(out["vectors"], dtype=np.float32).reshape(len(texts), int(out["dim"]))

    def embed_media(self, files: Any, modality: str) -> np.ndarray:
        """Encodes image or audio files (bytes or paths) on the server; ``[n, dim]`` float32."""
        data = [base64.b64encode(b).decode("ascii") for b in media_bytes(files)]
        out = self.request("POST", "/v1/embed", {"media": data, "modality": modality})
        return np.asarray(out["vectors"], dtype=np.float32).reshape(len(data), int(out["dim"]))

    def health(self) -> Dict[str, Any]:
        return self.request("GET", "/healthz")

    def close(self) -> None:
        self._drop_conn()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kernelize.Client {self.url}>"


def _seg(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def _retry_after(v: Optional[str]) -> Optional[float]:
    try:
        return None if v is None else max(0.0, float(v))
    except ValueError:
        return None


class RemoteCollection(CollectionAPI):
    """A collection on a server; the API of the embedded :class:`~kernelize.Collection`."""

    def __init__(self, client: Client, info: Dict[str, Any]) -> None:
        self._client = client
        self.name = info["name"]
        self.dim = int(info["dim"])
        self.metric = info["metric"]
        self.modality = (info.get("encoder") or {}).get("modality", "text")
        self._path = f"/v1/collections/{_seg(self.name)}"

    def upsert(self, ids: Iterable[str], vectors: Any = None, *, texts: Optional[Sequence[Optional[str]]] = None,
               metadata: Optional[Sequence[Optional[Dict[str, Any]]]] = None) -> int:
        """As the embedded upsert; sent in requests of 1,000 records, each atomic on the
        server, in order (a failure leaves the requests before it written)."""
        ids, v, t, m = self._upsert_args(ids, vectors, texts, metadata)
        seq = 0
        for start in range(0, len(ids), UPSERT_BATCH):
            recs = []
            for i in range(start, min(start + UPSERT_BATCH, len(ids))):
                r: Dict[str, Any] = {"id": ids[i]}
                if v is not None:
                    r["vector"] = v[i].tolist()
                if t is not None and t[i] is not None:
                    r["text"] = t[i]
                if m is not None and m[i] is not None:
                    r["metadata"] = json.loads(m[i])
                recs.append(r)
            seq = self._client.request("POST", f"{self._path}/records", {"records": recs})["seq"]
        return seq

    def delete(self, ids: Iterable[str]) -> int:
        ids = check_ids(ids)
        if not ids:
            raise InvalidArgument("delete: no ids")
        seq = 0
        for start in range(0, len(ids), DELETE_BATCH):
            seq = self._client.request("POST", f"{self._path}/records:delete",
                                       {"ids": ids[start:start + DELETE_BATCH]})["seq"]
        return seq

    def _get(self, ids: List[str], vectors: bool) -> List[Optional[Record]]:
        out: List[Optional[Record]] = []
        for rid in ids:
            try:
                r = self._client.request("GET", f"{self._path}/records/{_seg(rid)}", query={"vector": vectors})
            except KernelizeError as e:
                if e.status == 404 and e.code == "not_found":
                    out.append(None)
                    continue
                raise
            out.append(_record(r, vectors))
        return out

    def _encode_media(self, files: List[bytes]) -> np.ndarray:
        return self._client.embed_media(files, self.modality)

    def _search(self, q: Optional[np.ndarray], t: Optional[List[str]], k: int, ef: Optional[int],
                f: Optional[str], mode: str, exact: bool, records: bool, include_vectors: bool) -> SearchResult:
        nq = q.shape[0] if q is not None else len(t or [])
        filt: Any = json.loads(f) if f is not None and f.lstrip().startswith("{") else f

        def one(i: int) -> List[Dict[str, Any]]:
            body: Dict[str, Any] = {"k": k, "mode": mode}
            if q is not None:
                body["vector"] = q[i].tolist()
            if t is not None:
                body["text"] = t[i]
            if ef is not None:
                body["ef"] = ef
            if filt is not None:
                body["filter"] = filt
            if exact:
                body["exact"] = True
            if include_vectors:
                body["include_vectors"] = True
            try:
                return self._client.request("POST", f"{self._path}/search", body)["hits"]
            except KernelizeError as e:
                if nq > 1:
                    e.args = (f"query {i}: {e.args[0]}",)
                raise

        if nq > 1 and self._client.workers > 1:
            with ThreadPoolExecutor(min(self._client.workers, nq)) as ex:
                rows = list(ex.map(one, range(nq)))
        else:
            rows = [one(i) for i in range(nq)]
        scores = np.full((nq, k), np.nan, dtype=np.float32)
        for i, hits in enumerate(rows):
            scores[i, : len(hits)] = [h["score"] for h in hits]
        recs = [[_record(h, include_vectors) for h in hits] for hits in rows] if records else None
        return SearchResult(ids_array([[h["id"] for h in hits] for hits in rows], k), scores, recs)

    def _info(self) -> Dict[str, Any]:
        return self._client.request("GET", self._path)

    def count(self) -> int:
        return int(self._info()["records"])

    def stats(self) -> Dict[str, Any]:
        return self._info()

    def _pages(self, vectors: bool, page: int) -> Iterator[List[Dict[str, Any]]]:
        after = None
        while True:
            doc = self._client.request("GET", f"{self._path}/records",
                                       query={"after": after, "limit": page, "vectors": vectors})
            if doc["records"]:
                yield doc["records"]
            after = doc.get("next_after")
            if not after:
                return

    def to_arrow(self, batch_size: int = SCAN_PAGE, vectors: bool = True):
        """Every live record, paged from the server (pages of up to 1,000 records, each
        consistent; records written while paging may or may not be seen), as a
        ``pyarrow.RecordBatchReader`` with the embedded layout."""
        import pyarrow as pa

        fields = [pa.field("id", pa.utf8(), nullable=False)]
        if vectors:
            fields.append(pa.field("vector", pa.list_(pa.field("item", pa.float32(), nullable=False), self.dim),
                                   nullable=False))
        fields += [pa.field("text", pa.utf8()), pa.field("metadata", pa.utf8())]
        schema = pa.schema(fields)
        page = max(1, min(int(batch_size), SCAN_PAGE))

        def batches() -> Iterator[Any]:
            for recs in self._pages(vectors, page):
                cols: List[Any] = [pa.array([r["id"] for r in recs], pa.utf8())]
                if vectors:
                    flat = np.asarray([r["vector"] for r in recs], dtype=np.float32).reshape(-1)
                    cols.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self.dim))
                cols.append(pa.array([r.get("text") for r in recs], pa.utf8()))
                cols.append(pa.array([None if r.get("metadata") is None else json.dumps(r["metadata"], separators=(",", ":"))
                                      for r in recs], pa.utf8()))
                yield pa.RecordBatch.from_arrays(cols, schema=schema)

        return pa.RecordBatchReader.from_batches(schema, batches())


def _record(r: Dict[str, Any], vectors: bool) -> Record:
    out: Record = {"id": r["id"]}
    if vectors:
        v = r.get("vector")
        out["vector"] = None if v is None else np.asarray(v, dtype=np.float32)
    out["text"] = r.get("text")
    out["metadata"] = r.get("metadata")
    return out


def connect(url: str, api_key: Optional[str] = None, **kw: Any) -> Client:
    """A :class:`Client` for the server at ``url``."""
    return Client(url, api_key, **kw)
