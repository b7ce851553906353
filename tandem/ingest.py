"""`tandem ingest`: stream a corpus into a collection over UpsertStream.

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
           progress: bool = True, language: str = "", chunk_tokens: int = 0, chunk_overlap: int = 0) -> dict:
    """Create the collection (chunked when chunk_tokens is set) unless it exists, then stream the source."""
    source = Path(source)
    if create:
        try:
            client.create_collection(collection, language=language, chunk_tokens=chunk_tokens or None,
                                     chunk_overlap=chunk_overlap)
        except TandemError as exc:
            if exc.code.name != "ALREADY_EXISTS":
                raise
    skipped: list[str] = []

    def docs():  # re-read from the start if the stream has to be re-sent
        skipped.clear()
        for d in documents(source):
            if d.text.strip():
                yield d
            else:  # the server refuses empty text; say so instead of failing
                skipped.append(d.id)

    total = sum(1 for _ in documents(source)) if progress else None
    start = time.perf_counter()
    resp = client.upsert_stream(collection, docs, batch_size=batch, progress=progress, total=total)
    seconds = time.perf_counter() - start
    return {"documents": resp.upserted, "passages": resp.passages, "messages": resp.requests, "seconds": seconds,
            "skipped_empty": list(skipped), "docs_per_second": resp.upserted / seconds if seconds else 0.0,
            "passages_per_second": resp.passages / seconds if seconds else 0.0}


def print_report(r: dict, out=sys.stdout) -> None:
    print(f"ingested {r['documents']} documents ({r['passages']} passages) in {r['seconds']:.1f}s "
          f"({r['docs_per_second']:.1f} docs/s, {r['passages_per_second']:.1f} passages/s)", file=out)
    if r["skipped_empty"]:
        print(f"skipped {len(r['skipped_empty'])} documents with no text: {', '.join(r['skipped_empty'][:10])}",
              file=out)
