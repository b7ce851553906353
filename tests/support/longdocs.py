"""Long documents whose relevant part sits deep inside, built from real IR collections.

Each Cranfield document (aeronautics) becomes a long document: CISI abstracts (library science, relevant to no
Cranfield query) as filler until at least `lead_tokens` embedder tokens, then the Cranfield title and abstract.
Cranfield's queries and judgements carry over unchanged, so nDCG@10 on the plain abstracts, on the long
documents chunked and on the long documents unchunked can be compared directly.
"""

from __future__ import annotations

import json

from tests.support.serverproc import REPO

DATA = REPO / "datasets"


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / name / "corpus.jsonl").read_text().splitlines()]


def cranfield(queries: int | None = None, extra: int = 0) -> tuple[list[dict], dict[str, str], dict]:
    """(documents, queries, qrels): the first `queries` judged queries, the documents judged for them, and
    `extra` unjudged ones as distractors (all of Cranfield when queries is None)."""
    from tandem.evaluate import load_queries

    qs, qrels = load_queries(DATA / "cranfield")
    if queries is not None:
        keep = list(qs)[:queries]
        qs, qrels = {q: qs[q] for q in keep}, {q: qrels[q] for q in keep}
    rows = [r for r in _rows("cranfield") if (r.get("text") or "").strip()]
    if queries is not None:
        judged = {d for q in qrels.values() for d in q}
        wanted = [r for r in rows if r["_id"] in judged]
        rows = wanted + [r for r in rows if r["_id"] not in judged][:extra]
    return [{"id": r["_id"], "text": f"{r['title']} {r['text']}".strip()} for r in rows], qs, qrels


def lengthen(docs: list[dict], count_tokens, lead_tokens: int = 1000) -> list[dict]:
    """Each document behind at least `lead_tokens` tokens of CISI filler; adds `lead_chars`, where it starts."""
    filler = [f"{r['title']} {r['text']}".strip() for r in _rows("cisi") if (r.get("text") or "").strip()]
    out, j = [], 0
    for d in docs:
        lead, tokens = [], 0
        while tokens < lead_tokens:
            lead.append(filler[j % len(filler)])
            tokens += count_tokens(lead[-1])
            j += 1
        head = "\n\n".join(lead) + "\n\n"
        out.append({**d, "text": head + d["text"], "lead_chars": len(head)})
    return out
