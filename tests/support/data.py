"""The IR collections in BEIR layout under datasets/ (copies of ../shared/data)."""

from __future__ import annotations

import json

from tests.support.serverproc import REPO

DATA = REPO / "datasets"


def load_beir(name: str, limit: int | None = None):
    root = DATA / name
    corpus = [json.loads(x) for x in (root / "corpus.jsonl").read_text().splitlines()[:limit]]
    queries = [json.loads(x) for x in (root / "queries.jsonl").read_text().splitlines()]
    return corpus, queries
