"""The fixed calibration set the backend choice measures on: 12 Cranfield queries, 16 passages each.

Each query's passages are its judged-relevant abstracts first, then others, cut to 8-100 words, so a group has
the spread of lengths and scores a reranker sees after recall. The set ships as calibration.json beside this
file; regenerate it (deterministically) from the repository's copy of Cranfield with

    python -m tandem.workers.calibration datasets/cranfield > workers/calibration.json
"""

from __future__ import annotations

import json
import random
import sys
from functools import lru_cache
from pathlib import Path

GROUPS, PER_GROUP = 12, 16


@lru_cache(maxsize=1)
def groups() -> list[tuple[str, list[str]]]:
    """[(query, [passage, ...]), ...]."""
    data = json.loads((Path(__file__).with_name("calibration.json")).read_text())
    return [(g["query"], g["passages"]) for g in data["groups"]]


def digest() -> str:
    """Changes when the set does, so a decision measured on another set is not reused."""
    import hashlib

    return "calibration " + hashlib.sha256(Path(__file__).with_name("calibration.json").read_bytes()).hexdigest()[:12]


def pairs() -> list[tuple[str, str]]:
    return [(q, p) for q, ps in groups() for p in ps]


def texts() -> list[str]:
    """What an embedder is calibrated on: each group's query, then its passages (17 a group), for the first half
    of the groups: cosine is judged per text, so 102 texts tell as much as 204, in half the start-up time."""
    return [t for q, ps in groups()[:GROUPS // 2] for t in (q, *ps)]


def _generate(folder: Path) -> dict:
    rng = random.Random(20)
    docs = {}
    for line in (folder / "corpus.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d["text"].strip():
            docs[d["_id"]] = d["text"].split()
    queries = {q["_id"]: q["text"] for q in map(json.loads, (folder / "queries.jsonl").read_text().splitlines())}
    qrels: dict[str, list[str]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, rel = line.split("\t")[:3]
        if int(rel) > 0 and did in docs:
            qrels.setdefault(qid, []).append(did)
    ids = sorted(docs)
    out = []
    for qid in rng.sample(sorted(q for q in qrels if q in queries), GROUPS):
        chosen = qrels[qid][:PER_GROUP // 2]
        chosen += rng.sample([d for d in ids if d not in chosen], PER_GROUP - len(chosen))
        out.append({"query": queries[qid],
                    "passages": [" ".join(docs[d][:rng.randint(8, 100)]) for d in chosen]})
    return {"source": "Cranfield (BEIR layout), relevant abstracts first, 8-100 words each", "groups": out}


if __name__ == "__main__":
    print(json.dumps(_generate(Path(sys.argv[1] if len(sys.argv) > 1 else "datasets/cranfield")), indent=1))
