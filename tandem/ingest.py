"""`tandem ingest`: write a corpus into a collection in batches of Upserts, a few in flight; progress counts
what the server acknowledged.

Sources: a BEIR corpus.jsonl (`_id`, `title`, `text`), plain JSONL (`id`, `text`, `metadata`), a BEIR folder
(holding corpus.jsonl), or a folder of .txt and .md files (id: the path inside the folder; metadata: path
and title, the first line).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterator

from tandem.client import Client
from tandem.errors import TandemError
from tandem.messages import Document

TEXT_SUFFIXES = (".txt", ".md")


def read_corpus(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def to_document(row: dict) -> Document:
    """A JSONL row: BEIR (`_id`; the text embedded is `title + " " + text`) or plain (`id`, `text`,
    `metadata`)."""
    if "_id" in row:
        title, text = row.get("title") or "", row.get("text") or ""
        return Document(str(row["_id"]), f"{title} {text}".strip(), {"title": title, **(row.get("metadata") or {})})
    if "id" not in row or "text" not in row:
        raise ValueError(f"a JSONL line needs `id` and `text` (or BEIR's `_id`); got keys {sorted(row)}")
    return Document(str(row["id"]), row["text"] or "", row.get("metadata") or {})


def text_files(folder: Path) -> Iterator[Document]:
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES:
            text = p.read_text(encoding="utf-8", errors="replace")
            rel = p.relative_to(folder).as_posix()
            first = next((ln.strip().lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), "")
            yield Document(rel, text.strip(), {"path": rel, "title": first[:200]})


def documents(source: Path) -> Iterator[Document]:
    """Every document of a source (see the module docstring), in order."""
    if source.is_dir():
        if (source / "corpus.jsonl").exists():
            source = source / "corpus.jsonl"
        else:
            yield from text_files(source)
            return
    for row in read_corpus(source):
        yield to_document(row)


def ingest(client: Client, collection: str, source: Path, *, batch: int = 64, create: bool = True,
           progress: bool = True, language: str = "", chunk_tokens: int = 0, chunk_overlap: int = 0,
           in_flight: int = 4) -> dict:
    """Create the collection (chunked when chunk_tokens is set) unless it exists, then write the source in
    batches of unary Upserts, `in_flight` at a time. Progress counts what the server acknowledged (a batch is
    stored when its Upsert returns), and documents with no text are counted apart: the server refuses them."""
    source = Path(source)
    if create:
        try:
            client.create_collection(collection, language=language, chunk_tokens=chunk_tokens or None,
                                     chunk_overlap=chunk_overlap)
        except TandemError as exc:
            if exc.code.name != "ALREADY_EXISTS":
                raise
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from tqdm import tqdm

    skipped: list[str] = []
    total = sum(1 for d in documents(source) if d.text.strip()) if progress else None
    stored = passages = calls = 0
    start = time.perf_counter()

    def upsert(docs):  # idempotent by id, so the client retries it through a restart
        return client.upsert_batch(collection, docs)

    with ThreadPoolExecutor(in_flight) as pool, tqdm(total=total, unit="doc", disable=not progress,
                                                      file=sys.stderr) as bar:
        pending: set = set()
        current: list = []

        def settle(done) -> None:
            nonlocal stored, passages, calls
            for f in done:
                r = f.result()
                stored, passages, calls = stored + r.upserted, passages + r.passages, calls + 1
                bar.update(r.upserted)

        def send() -> None:
            nonlocal pending
            if len(pending) >= in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                settle(done)
            pending.add(pool.submit(upsert, list(current)))
            current.clear()

        for d in documents(source):
            if not d.text.strip():
                skipped.append(d.id)
                bar.set_postfix(skipped=len(skipped), refresh=False)
                continue
            current.append(d)
            if len(current) >= batch:
                send()
        if current:
            send()
        settle(wait(pending).done)
    seconds = time.perf_counter() - start
    return {"documents": stored, "passages": passages, "messages": calls, "seconds": seconds,
            "skipped_empty": list(skipped), "docs_per_second": stored / seconds if seconds else 0.0,
            "passages_per_second": passages / seconds if seconds else 0.0}


def print_report(r: dict, out=sys.stdout) -> None:
    print(f"ingested {r['documents']} documents ({r['passages']} passages) in {r['seconds']:.1f}s "
          f"({r['docs_per_second']:.1f} docs/s, {r['passages_per_second']:.1f} passages/s)", file=out)
    if r["skipped_empty"]:
        print(f"skipped {len(r['skipped_empty'])} documents with no text: {', '.join(r['skipped_empty'][:10])}",
              file=out)
