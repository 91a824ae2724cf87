#!/usr/bin/env python3
"""Build WN-Supersense, the LLM-program task, from Debian's wordnet-base (seeded).

Normally run through scripts/wn-supersense.sh (installs wordnet-base when missing).
Standard library only; reuses the WordNet parser of scripts/wordnet_corpus.py.

Task: input = a lemma, its part of speech and its synset's gloss; output = the synset's
lexicographer file ("supersense"), e.g. noun.animal. The allowed labels depend on the
part of speech: 26 noun classes, 15 verb classes (adjectives and adverbs are left out).

Items: every noun and verb synset is a candidate; the lemma shown is the synset's first
lemma. A pool of train+val+test items is drawn with random.Random(seed), then split per
label (stratified): each label's items are shuffled and cut in the proportions
train 400 : val 200 : test 400 (largest-remainder rounding so the totals are exact).

Output (--out DIR, default data/wn-supersense): train.jsonl, val.jsonl, test.jsonl, one
example per line in the programs' Example format:

    {"inputs": {"lemma": "dog", "pos": "noun", "gloss": "...",
                "candidates": ["noun.Tops", ..., "noun.time"]},
     "outputs": {"supersense": "noun.animal"}}

and labels.json (the 41 labels by part of speech). Files are written atomically with a
sha256 manifest (DIR/manifest.json); a rerun with the same parameters is a no-op.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wordnet_corpus as wc  # noqa: E402

SPLITS = (("train", 400), ("val", 200), ("test", 400))
POS_NAME = {"n": "noun", "v": "verb"}


def labels_by_pos() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"noun": [], "verb": []}
    for name in wc.WN30_LEXNAMES:
        kind = name.split(".")[0]
        if kind in out:
            out[kind].append(name)
    return out


def stratified(items: list[dict], seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    by_label: dict[str, list[dict]] = {}
    for it in items:
        by_label.setdefault(it["outputs"]["supersense"], []).append(it)
    # Per label and split: floor of the exact share, then the largest remainders
    # (over all label-split cells) get one more until every split has its size.
    cells = []
    counts: dict[tuple[str, str], int] = {}
    for label in sorted(by_label):
        n_label = len(by_label[label])
        for split, size in SPLITS:
            exact = n_label * size / len(items)
            counts[(label, split)] = int(exact)
            cells.append((exact - int(exact), label, split))
    for split, size in SPLITS:
        have = sum(c for (l, s), c in counts.items() if s == split)
        for _, label, s in sorted((c for c in cells if c[2] == split), key=lambda c: (-c[0], c[1])):
            if have >= size:
                break
            counts[(label, s)] += 1
            have += 1
    out: dict[str, list[dict]] = {s: [] for s, _ in SPLITS}
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        at = 0
        for split, _ in SPLITS:
            k = counts[(label, split)]
            out[split].extend(group[at : at + k])
            at += k
        assert at <= len(group), label
    for split, size in SPLITS:
        rng.shuffle(out[split])
        assert len(out[split]) == size, (split, len(out[split]))
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/wn-supersense")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--dict-dir", default=os.environ.get("WNSEARCHDIR", "/usr/share/wordnet"))
    ap.add_argument("--check", action="store_true", help="exit 0 when up to date, 3 when work is needed")
    args = ap.parse_args(argv)
    params = {"kind": "wn-supersense", "version": 1, "seed": args.seed, "splits": dict(SPLITS)}
    manifest = os.path.join(args.out, "manifest.json")
    try:
        with open(manifest, encoding="utf-8") as f:
            m = json.load(f)
        if m.get("params") == params and all(
            os.path.exists(os.path.join(args.out, f"{s}.jsonl"))
            and wc.sha256_file(os.path.join(args.out, f"{s}.jsonl")) == m["sha256"][s]
            for s, _ in SPLITS
        ):
            return 0
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        pass
    if args.check:
        return 3
    labels = labels_by_pos()
    synsets = wc.parse_wordnet(args.dict_dir, wc.WN30_TOTAL)
    items = []
    for s in synsets:
        pos = POS_NAME.get(s["metadata"]["pos"])
        if pos is None:
            continue
        label = s["metadata"]["lexname"]
        if label not in labels[pos]:
            raise SystemExit(f"wn-supersense: {s['id']}: label {label!r} is not a {pos} class")
        items.append(
            {
                "id": s["id"],
                "inputs": {"lemma": s["metadata"]["lemmas"][0], "pos": pos, "gloss": s["text"], "candidates": labels[pos]},
                "outputs": {"supersense": label},
            }
        )
    rng = random.Random(args.seed)
    total = sum(n for _, n in SPLITS)
    # A pool twice the needed size keeps every label's share close to WordNet's.
    pool = rng.sample(items, 2 * total)
    # Stratify over the pool's label distribution, then cut: each split keeps the shares.
    splits = stratified(pool, args.seed)
    sha = {}
    for split, _ in SPLITS:
        path = os.path.join(args.out, f"{split}.jsonl")
        _, sha[split] = wc.atomic_write(path, (wc.dumps(x) for x in splits[split]))
        dist: dict[str, int] = {}
        for x in splits[split]:
            dist[x["outputs"]["supersense"]] = dist.get(x["outputs"]["supersense"], 0) + 1
        wc.log(f"{path}: {len(splits[split])} items, {len(dist)} labels")
    wc.atomic_write(os.path.join(args.out, "labels.json"), [json.dumps(labels, indent=1) + "\n"])
    wc.atomic_write(manifest, [json.dumps({"params": params, "sha256": sha}, indent=2, sort_keys=True) + "\n"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
