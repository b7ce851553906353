"""The calibration set the backend choice measures on (workers/backend_choice.py): Cranfield queries, each with
the candidates a served call would score.

Groups come in the two shapes a CPU server reranks:
- Search: a query and the 50 candidates (the CPU's default rerank depth) that a lexical recall over the whole
  collection finds for it, so the group holds its relevant abstracts and the near-misses they compete with,
  each cut to its opening of 10-95 words (up to about 128 tokens, the CPU's default max_tokens_per_doc);
- Rerank: a query and 6-24 passages drawn at random, titles to 95 words.

Agreement is judged per group, so more groups make a verdict that no single group decides (see
backend_choice.py); speed is timed on a few of them (`timing_groups`), cut into batches as the server cuts them.
The set ships as calibration.json beside this file; regenerate it (deterministically) from the repository's
copy of Cranfield with

    python -m tandem.workers.calibration datasets/cranfield > workers/calibration.json
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from functools import lru_cache
from pathlib import Path

SEARCH_GROUPS, SEARCH_CANDIDATES = 16, 50
RERANK_GROUPS, RERANK_CANDIDATES = 32, (6, 24)
EMBED_TEXTS = 128
_STOP = set("a an and are as at be by can do does for from has have how i in is it of on or that the there these "
            "this to was what when where which with any been being find made on other some such than their them "
            "they were will would".split())


@lru_cache(maxsize=1)
def groups() -> list[tuple[str, list[str]]]:
    """[(query, [passage, ...]), ...]: the Search-shaped groups first, then the Rerank-shaped ones."""
    data = json.loads((Path(__file__).with_name("calibration.json")).read_text())
    return [(g["query"], g["passages"]) for g in data["groups"]]


def timing_groups() -> list[tuple[str, list[str]]]:
    """What speed is timed on: 2 Search-shaped groups (100 long pairs) and 8 Rerank-shaped ones, about the mix of
    long and short batches a server runs, in a fraction of the set."""
    g = groups()
    return g[:2] + g[SEARCH_GROUPS:SEARCH_GROUPS + 8]


def digest() -> str:
    """Changes when the set does, so a decision measured on another set is not reused."""
    import hashlib

    return "calibration " + hashlib.sha256(Path(__file__).with_name("calibration.json").read_bytes()).hexdigest()[:12]


def pairs() -> list[tuple[str, str]]:
    return [(q, p) for q, ps in groups() for p in ps]


def texts() -> list[str]:
    """What an embedder is calibrated on: queries and passages, every fourth text of the set up to
    EMBED_TEXTS: cosine is judged per text, so a sample tells as much as the whole."""
    every = [t for q, ps in groups() for t in (q, *ps)]
    return every[::4][:EMBED_TEXTS]


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) > 1]


def _generate(folder: Path) -> dict:
    rng = random.Random(20)
    docs, titles = {}, {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d["text"].strip():
            docs[d["_id"]] = d["text"].split()
            titles[d["_id"]] = d.get("title", "").strip()
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    judged = set()
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, rel = line.split("\t")[:3]
        if int(rel) > 0 and did in docs:
            judged.add(qid)
    ids = sorted(docs)
    # A lexical recall: candidates ranked by how many of the query's words they hold, weighted by rarity.
    df = Counter(w for d in ids for w in set(_words(" ".join(docs[d]))))
    bags = {d: set(_words(" ".join(docs[d]))) for d in ids}
    qids = rng.sample(sorted(q for q in judged if q in queries), SEARCH_GROUPS + RERANK_GROUPS)
    out = []
    for qid in qids[:SEARCH_GROUPS]:
        terms = set(_words(queries[qid]))
        score = {d: sum(1 / df[w] for w in terms & bags[d]) for d in ids}
        top = sorted(ids, key=lambda d: (-score[d], d))[:SEARCH_CANDIDATES]
        out.append({"query": queries[qid], "shape": "search",
                    "passages": [" ".join(docs[d][:rng.randint(10, 95)]) for d in top]})
    for qid in qids[SEARCH_GROUPS:]:
        chosen = rng.sample(ids, rng.randint(*RERANK_CANDIDATES))
        out.append({"query": queries[qid], "shape": "rerank",
                    "passages": [titles[d] if titles[d] and rng.random() < 0.25 else
                                 " ".join(docs[d][:rng.randint(8, 95)]) for d in chosen]})
    return {"source": f"Cranfield (BEIR layout): {SEARCH_GROUPS} Search-shaped groups (the {SEARCH_CANDIDATES} "
                      f"best of a lexical recall, 10-95 words each), then {RERANK_GROUPS} Rerank-shaped groups "
                      f"({RERANK_CANDIDATES[0]}-{RERANK_CANDIDATES[1]} random passages, titles to 95 words)",
            "groups": out}


if __name__ == "__main__":
    print(json.dumps(_generate(Path(sys.argv[1] if len(sys.argv) > 1 else "datasets/cranfield")), indent=1))
