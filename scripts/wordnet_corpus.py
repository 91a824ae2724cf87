#!/usr/bin/env python3
"""Build the WordNet 3.0 demo corpus (JSONL) and a held-out lemma query set.

Normally run through scripts/wordnet-corpus.sh, which installs Debian's
`wordnet-base` first. Standard library only.

Corpus: one synset per line, in file order noun, verb, adj, adv:

    {"id": "n:02084071", "text": "<gloss>",
     "metadata": {"pos": "n", "lemmas": ["dog", "domestic dog", "Canis familiaris"],
                  "lexname": "noun.animal"}}

  * id    = "<pos>:<8-digit byte offset in data.<pos file>>". pos is the synset
            type from the data file (n, v, a, s, r). Adjective satellites ("s")
            live in data.adj next to head adjectives ("a"); offsets are unique
            per file, so ids are unique.
  * text  = the gloss: everything after " | ", trimmed (definition plus the
            quoted example sentences, exactly as WordNet prints it).
  * lemmas: underscores -> spaces, adjective syntactic markers "(a)", "(p)",
            "(ip)" stripped, duplicates removed, WordNet order kept.
  * lexname from <dict>/lexnames if present (Debian does not ship it), else the
            WordNet 3.0 table from lexnames(5WN), which is identical.

Queries (--queries): N lemmas drawn with random.Random(seed) from the lemmas
whose case-insensitive spelling belongs to exactly one synset in the WHOLE of
WordNet (so the right answer is unique) and whose synset is in the written
corpus; one line each: {"query": "<lemma>", "answer_id": "<synset id>"}.
The lemma is in the answer's metadata.lemmas, so evaluate retrieval on `text`
(the gloss) only; the script prints how often the lemma occurs verbatim in the
answer's gloss.

Completeness: each output is written to a temp file in the same directory,
fsynced and renamed into place, then a sidecar "<out>.manifest.json" (record
count, parameters, sha256) is written the same way. A run is skipped when the
manifest matches the request and the file's sha256 matches the manifest, so an
interrupted run is never mistaken for a complete one.

Exit status: 0 ok (or skipped), 1 validation failure, 2 usage error,
3 (--check only) work needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import sys
import tempfile

POS_FILES = ("noun", "verb", "adj", "adv")
# Synset counts of Princeton WordNet 3.0 (data.noun, data.verb, data.adj, data.adv).
WN30_TOTAL = 117659

# lexnames(5WN), WordNet 3.0 -- used when <dict>/lexnames is absent.
WN30_LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal",
    "noun.artifact", "noun.attribute", "noun.body", "noun.cognition",
    "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape",
    "noun.state", "noun.substance", "noun.time", "verb.body", "verb.change",
    "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion",
    "verb.motion", "verb.perception", "verb.possession", "verb.social",
    "verb.stative", "verb.weather", "adj.ppl",
]

ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
MANIFEST_VERSION = 1


class CorpusError(Exception):
    pass


def log(msg: str) -> None:
    print(f"wordnet-corpus: {msg}", file=sys.stderr, flush=True)


def load_lexnames(dict_dir: str) -> tuple[dict[int, str], str]:
    path = os.path.join(dict_dir, "lexnames")
    if os.path.exists(path):
        names: dict[int, str] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    names[int(parts[0])] = parts[1]
        return names, path
    return dict(enumerate(WN30_LEXNAMES)), "built-in WordNet 3.0 table (lexnames(5WN))"


def parse_data_file(path: str, lexnames: dict[int, str]) -> tuple[list[dict], int]:
    """Parse one data.<pos> file. Returns (synsets, number of data lines)."""
    synsets: list[dict] = []
    data_lines = 0
    pos_in_file = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            start = pos_in_file
            pos_in_file += len(raw)
            if raw.startswith(b"  "):  # license header
                continue
            data_lines += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("latin-1")
            head, sep, gloss = line.partition(" | ")
            if not sep:
                raise CorpusError(f"{path}:{lineno}: no ' | ' gloss separator")
            t = head.split()
            offset = t[0]
            if len(offset) != 8 or not offset.isdigit():
                raise CorpusError(f"{path}:{lineno}: bad offset {offset!r}")
            # WordNet offsets are byte offsets of the line: verify, it catches
            # truncated or re-encoded files.
            if int(offset) != start:
                raise CorpusError(f"{path}:{lineno}: offset {offset} != byte position {start}")
            lex_filenum = int(t[1])
            ss_type = t[2]
            if ss_type not in ("n", "v", "a", "s", "r"):
                raise CorpusError(f"{path}:{lineno}: bad ss_type {ss_type!r}")
            w_cnt = int(t[3], 16)
            words = t[4 : 4 + 2 * w_cnt : 2]
            if len(words) != w_cnt:
                raise CorpusError(f"{path}:{lineno}: expected {w_cnt} words")
            lemmas: list[str] = []
            seen = set()
            for w in words:
                lemma = ADJ_MARKER.sub("", w).replace("_", " ")
                if lemma not in seen:
                    seen.add(lemma)
                    lemmas.append(lemma)
            text = gloss.strip()
            if not text:
                raise CorpusError(f"{path}:{lineno}: empty gloss")
            synsets.append(
                {
                    "id": f"{ss_type}:{offset}",
                    "text": text,
                    "metadata": {
                        "pos": ss_type,
                        "lemmas": lemmas,
                        "lexname": lexnames.get(lex_filenum, str(lex_filenum)),
                    },
                }
            )
    return synsets, data_lines


def parse_wordnet(dict_dir: str, expect_total: int) -> list[dict]:
    lexnames, lex_src = load_lexnames(dict_dir)
    log(f"lexnames: {lex_src}")
    all_synsets: list[dict] = []
    file_lines = 0
    per_pos: dict[str, int] = {}
    for name in POS_FILES:
        path = os.path.join(dict_dir, f"data.{name}")
        if not os.path.exists(path):
            raise CorpusError(f"{path} missing (install Debian package wordnet-base)")
        synsets, lines = parse_data_file(path, lexnames)
        if len(synsets) != lines:
            raise CorpusError(f"{path}: parsed {len(synsets)} synsets but file has {lines} data lines")
        file_lines += lines
        for s in synsets:
            p = s["metadata"]["pos"]
            per_pos[p] = per_pos.get(p, 0) + 1
        log(f"data.{name}: {len(synsets)} synsets")
        all_synsets.extend(synsets)
    ids = {s["id"] for s in all_synsets}
    if len(ids) != len(all_synsets):
        raise CorpusError("duplicate synset ids")
    for p in ("n", "v", "a", "s", "r"):
        log(f"  pos {p}: {per_pos.get(p, 0)}")
    log(f"  total: {len(all_synsets)} (data lines in files: {file_lines})")
    if len(all_synsets) != file_lines:
        raise CorpusError(f"total {len(all_synsets)} != {file_lines} data lines in the files")
    if expect_total and len(all_synsets) != expect_total:
        raise CorpusError(f"total {len(all_synsets)} != expected {expect_total} (use --expect-total 0 for another WordNet version)")
    return all_synsets


# ---------------------------------------------------------------- output files

def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_path(out: str) -> str:
    return out + ".manifest.json"


def atomic_write(path: str, lines_iter) -> tuple[int, str]:
    """Write lines to path via temp file + fsync + rename. Returns (n, sha256)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; use normal file permissions
    h = hashlib.sha256()
    n = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for line in lines_iter:
                b = line.encode("utf-8")
                h.update(b)
                f.write(b)
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return n, h.hexdigest()


def read_manifest(out: str) -> dict | None:
    try:
        with open(manifest_path(out), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(out: str, params: dict) -> bool:
    """True if out exists, its manifest matches params and its sha256 matches."""
    m = read_manifest(out)
    if not m or not os.path.exists(out):
        return False
    if m.get("manifest_version") != MANIFEST_VERSION or m.get("params") != params:
        return False
    return sha256_file(out) == m.get("sha256")


def write_manifest(out: str, params: dict, n: int, sha: str, extra: dict) -> None:
    m = {"manifest_version": MANIFEST_VERSION, "params": params, "records": n, "sha256": sha}
    m.update(extra)
    atomic_write(manifest_path(out), [json.dumps(m, indent=2, sort_keys=True) + "\n"])


def corpus_params(args) -> dict:
    return {"kind": "wordnet-corpus", "limit": args.limit, "dict": os.path.abspath(args.dict_dir)}


def queries_params(args, corpus_sha: str | None) -> dict:
    return {"kind": "wordnet-queries", "n_queries": args.n_queries, "seed": args.seed, "corpus_sha256": corpus_sha}


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


# ---------------------------------------------------------------- queries

def build_queries(all_synsets: list[dict], written_ids: set[str], n: int, seed: int) -> list[dict]:
    # case-insensitive lemma key -> set of synset ids over the whole of WordNet
    owners: dict[str, set[str]] = {}
    surface: dict[str, str] = {}
    for s in all_synsets:
        for lemma in s["metadata"]["lemmas"]:
            k = lemma.lower()
            owners.setdefault(k, set()).add(s["id"])
            surface.setdefault(k, lemma)
    candidates = sorted(
        k for k, ids in owners.items() if len(ids) == 1 and next(iter(ids)) in written_ids
    )
    log(f"queries: {len(owners)} distinct lemmas, {len(candidates)} unique-answer candidates in corpus")
    if len(candidates) < n:
        log(f"WARNING: only {len(candidates)} candidates, writing {len(candidates)} queries instead of {n}")
        n = len(candidates)
    rng = random.Random(seed)
    chosen = rng.sample(candidates, n)
    return [{"query": surface[k], "answer_id": next(iter(owners[k]))} for k in chosen]


# ---------------------------------------------------------------- main

def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default="data/wordnet.jsonl", help="corpus JSONL (default data/wordnet.jsonl)")
    ap.add_argument("--limit", type=int, default=None, help="write only the first N synsets (noun, verb, adj, adv file order)")
    ap.add_argument("--queries", metavar="OUT_Q", default=None, help="also write a held-out query set here")
    ap.add_argument("--n-queries", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dict-dir", default=os.environ.get("WNSEARCHDIR", "/usr/share/wordnet"))
    ap.add_argument("--expect-total", type=int, default=WN30_TOTAL, help="fail unless the files hold this many synsets (0: don't check)")
    ap.add_argument("--force", action="store_true", help="rebuild even if outputs are complete")
    ap.add_argument("--check", action="store_true", help="only report whether work is needed (exit 0 complete, 3 work needed)")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit <= 0:
        ap.error("--limit must be > 0")
    if args.n_queries <= 0:
        ap.error("--n-queries must be > 0")

    cparams = corpus_params(args)
    corpus_ok = not args.force and is_complete(args.out, cparams)
    corpus_sha = read_manifest(args.out)["sha256"] if corpus_ok else None
    queries_ok = True
    if args.queries:
        queries_ok = corpus_ok and is_complete(args.queries, queries_params(args, corpus_sha))

    if corpus_ok and queries_ok:
        m = read_manifest(args.out)
        log(f"{args.out} complete ({m['records']} synsets, manifest ok), skipping")
        if args.queries:
            log(f"{args.queries} complete ({read_manifest(args.queries)['records']} queries), skipping")
        return 0
    if args.check:
        return 3

    try:
        all_synsets = parse_wordnet(args.dict_dir, args.expect_total)
    except CorpusError as e:
        log(f"ERROR: {e}")
        return 1
    per_pos_all: dict[str, int] = {}
    for s in all_synsets:
        per_pos_all[s["metadata"]["pos"]] = per_pos_all.get(s["metadata"]["pos"], 0) + 1

    selected = all_synsets if args.limit is None else all_synsets[: args.limit]
    if not corpus_ok:
        n, sha = atomic_write(args.out, (dumps(s) for s in selected))
        if n != len(selected):
            log(f"ERROR: wrote {n} != {len(selected)}")
            return 1
        per_pos: dict[str, int] = {}
        for s in selected:
            per_pos[s["metadata"]["pos"]] = per_pos.get(s["metadata"]["pos"], 0) + 1
        write_manifest(args.out, cparams, n, sha, {"per_pos": per_pos, "wordnet_total": len(all_synsets), "wordnet_per_pos": per_pos_all})
        corpus_sha = sha
        log(f"wrote {args.out}: {n} synsets {json.dumps(per_pos, sort_keys=True)}")
    else:
        log(f"{args.out} complete, kept")

    if args.queries:
        qs = build_queries(all_synsets, {s["id"] for s in selected}, args.n_queries, args.seed)
        gloss = {s["id"]: s["text"].lower() for s in selected}
        in_gloss = sum(1 for q in qs if q["query"].lower() in gloss[q["answer_id"]])
        n, sha = atomic_write(args.queries, (dumps(q) for q in qs))
        write_manifest(args.queries, queries_params(args, corpus_sha), n, sha, {"corpus": os.path.abspath(args.out)})
        log(f"wrote {args.queries}: {n} queries (seed {args.seed}); lemma occurs verbatim in the answer gloss for {in_gloss} ({100.0 * in_gloss / max(n, 1):.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
