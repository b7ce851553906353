"""Export and import: a collection's rows with their vectors, so that moving a collection costs no embedding.

Export pages through the store (storage/scan.py) and hands out rows as stored: id, text, metadata as JSON text
and the dense vector as little-endian float32 bytes, plus the passage fields in a chunked collection. BM25
vectors are not exported; the engine derives them from the text again on import.

Import makes the collection from the recorded settings and writes the rows with their vectors, without the
embedder, when this server has the recorded embedder at the recorded dimension. Otherwise (or when the chunking
changes, which makes new passages) it needs `re_embed`, and then it goes through the Indexer like any upsert.
Writes are upserts by id, so an import sent again, whole or from where it stopped, ends with the same rows.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import numpy as np

from tandem.server import validation
from tandem.server.chunking import join
from tandem.server.engine.index import Document, Indexer
from tandem.server.errors import Kind, TandemError, invalid, precondition
from tandem.server.runtime import Runtime
from tandem.server.storage import MAX_TEXT_CHARS, CollectionExists, CollectionMeta
from tandem.workers import BatchStats

FORMAT_VERSION = 1
DEFAULT_PAGE, MAX_PAGE = 512, 16384


@dataclass(frozen=True)
class Record:
    """What a collection is: enough to make it again."""

    collection: str
    embedder: str
    dimension: int
    language: str
    chunking: tuple[int, int] | None
    documents: int = 0  # counts when the export began
    rows: int = 0
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class Row:
    """One stored row: a document, or one passage of one (then `id` is the document's)."""

    id: str
    text: str
    metadata_json: str  # a JSON object
    dense: bytes  # little-endian float32
    chunk: int = 0
    of: int = 0
    start: int = 0


@dataclass(frozen=True)
class ImportOptions:
    collection: str = ""  # empty: the recorded name
    into_existing: bool = False
    re_embed: bool = False
    embedder: str = ""  # with re_embed; empty: the server's default
    language: str = ""  # empty: the recorded analyzer
    chunking: tuple[int, int] | None = None  # None: the recorded chunking; (0, 0): whole documents


@dataclass(frozen=True)
class Imported:
    rows: int  # documents, or passages in a chunked collection
    documents: int
    requests: int
    re_embedded: bool
    stats: BatchStats  # the embedder's work (none without re_embed)
    seconds: float


class Transfer:
    def __init__(self, rt: Runtime, indexer: Indexer):
        self.rt, self.indexer = rt, indexer

    # -- export ----------------------------------------------------------------------------------------------------

    async def export(self, collection: str, page_size: int = 0) -> tuple[Record, AsyncIterator[list[Row]]]:
        """The collection's record (with its counts now) and its rows, a page at a time, in id order."""
        name = validation.collection(collection)
        if page_size > MAX_PAGE:
            raise invalid(f"page_size is {page_size}; the limit is {MAX_PAGE}")
        meta, documents, rows = await asyncio.to_thread(self.rt.store.describe, name)
        record = Record(name, meta.embedder, meta.dimension, meta.language, meta.chunking, documents, rows)
        # milvus-lite 2.5 fails a query for vectors in a collection that never held a row ("Growing segment loss
        # raw data"); one that holds none now has nothing to export.
        pages = self.rt.store.scan(name, page_size or DEFAULT_PAGE) if rows else _nothing()
        return record, self._pages(pages)

    @staticmethod
    async def _pages(pages: Iterator[list[dict]]) -> AsyncIterator[list[Row]]:
        try:
            while (page := await asyncio.to_thread(_next_rows, pages)) is not None:
                yield page
        finally:
            try:
                await asyncio.to_thread(pages.close)
            except ValueError:  # cancelled while a page was being read: that thread still holds it
                pass

    # -- import ----------------------------------------------------------------------------------------------------

    async def load(self, record: Record, options: ImportOptions, pages: AsyncIterator[list[Row]], *,
                   deadline: float | None = None) -> Imported:
        """Make (or, with into_existing, reuse) the collection and write every page's rows."""
        start = self.rt.clock()
        _check(record)
        name = validation.collection(options.collection or record.collection)
        chunking = record.chunking if options.chunking is None else (options.chunking if options.chunking[0] else None)
        if options.re_embed:
            model = self.rt.embedder_batcher(options.embedder).backend
            embedder, dimension = model.name, model.dimension
        else:
            if options.embedder and options.embedder != record.embedder:
                raise invalid(f"embedder {options.embedder!r} differs from the recorded {record.embedder!r}; "
                              "choosing another embedder needs re_embed (--re-embed)")
            if chunking != record.chunking:
                raise precondition(f"the chunking changes from {_chunking(record.chunking)} to {_chunking(chunking)}, "
                                   "which makes new passages to embed: import with --re-embed (ImportRequest.re_embed)")
            self._same_embedder(record)
            embedder, dimension = record.embedder, record.dimension
        meta, existed = await self._target(name, embedder, dimension, options.language or record.language, chunking,
                                           options.into_existing)
        count = _Count()
        if options.re_embed:
            w = await self.indexer.upsert_stream(self._documents(name, record, pages, count), deadline=deadline)
            return Imported(w.passages, w.upserted, count.requests, True, w.stats, self.rt.clock() - start)
        pending: asyncio.Future | None = None  # the previous message's write: checking the next one overlaps it
        try:
            async for page in pages:
                count.requests += 1
                if not page:
                    continue
                rows = await asyncio.to_thread(_checked, meta, page, f"message {count.requests}")
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(self._put(meta, rows, existed, count))
            if pending is not None:
                await pending
                pending = None
        finally:
            if pending is not None:
                await asyncio.shield(pending)  # let a write in progress finish rather than abandon it half-way
        if count.requests == 0:
            raise invalid("the stream carried no messages: the first must carry the record")
        return Imported(count.rows, count.documents, count.requests, False, BatchStats(0, 0, 0, 0.0, 0.0),
                        self.rt.clock() - start)

    async def _put(self, meta: CollectionMeta, rows: list[dict], existed: bool, count: "_Count") -> None:
        n = await asyncio.to_thread(self.rt.store.put, meta.name, rows, existed)
        count.rows += n
        count.documents += sum(1 for r in rows if r.get("chunk", 0) == 0)
        self.rt.wrote(meta.name, n)

    def _same_embedder(self, record: Record) -> None:
        """The recorded vectors may be stored only when this server embeds queries the same way."""
        hint = (f"import with --re-embed (ImportRequest.re_embed) to embed the texts again with "
                f"{self.rt.default_embedder!r}")
        b = self.rt.embedders.get(record.embedder)
        if b is None:
            raise precondition(f"the export's vectors come from embedder {record.embedder!r} (dimension "
                               f"{record.dimension}), which this server has not loaded (loaded: "
                               f"{', '.join(self.rt.embedders)}). Load it (--embedder {record.embedder}=PATH), "
                               f"or {hint}")
        if b.backend.dimension != record.dimension:
            raise precondition(f"the export holds {record.dimension}-dimensional vectors from {record.embedder!r}, "
                               f"but this server's {record.embedder!r} makes {b.backend.dimension}-dimensional ones: "
                               f"it is another model under the same name. Load the recorded model, or {hint}")

    async def _target(self, name: str, embedder: str, dimension: int, language: str,
                      chunking: tuple[int, int] | None, into_existing: bool) -> tuple[CollectionMeta, bool]:
        """(the collection's meta, whether it existed)."""
        try:
            return (await self.indexer.create(name, embedder=embedder, language=language, chunking=chunking)).meta, False
        except CollectionExists:
            if not into_existing:
                raise TandemError(f"collection {name!r} already exists; import with --into-existing "
                                  "(ImportRequest.into_existing) to write into it, or choose another name",
                                  Kind.ALREADY_EXISTS) from None
        meta = await asyncio.to_thread(self.rt.store.meta, name)
        if (meta.embedder, meta.dimension, meta.chunking) != (embedder, dimension, chunking):
            raise precondition(f"collection {name!r} holds {meta.dimension}-dimensional vectors from "
                               f"{meta.embedder!r} with chunking {_chunking(meta.chunking)}; the import brings "
                               f"{dimension}-dimensional vectors from {embedder!r} with chunking "
                               f"{_chunking(chunking)}: import into a new collection instead")
        return meta, True

    async def _documents(self, name: str, record: Record, pages: AsyncIterator[list[Row]],
                         count: "_Count") -> AsyncIterator[tuple[str, list[Document]]]:
        """Rows as whole documents for the Indexer: a chunked export's passages are joined again once all of a
        document's have arrived (they may span messages)."""
        parts: dict[str, tuple[int, dict, dict[int, tuple[int, str]]]] = {}  # id -> (of, metadata, passages)
        limit, sent = self.rt.config.max_documents_per_request, False
        async for page in pages:
            count.requests += 1
            docs = []
            for i, r in enumerate(page):
                metadata = _metadata(r.metadata_json, f"message {count.requests}: rows[{i}]")
                if record.chunking is None:
                    docs.append(Document(r.id, r.text, metadata))
                    continue
                of, md, got = parts.setdefault(r.id, (r.of, metadata, {}))
                got[r.chunk] = (r.start, r.text)
                if len(got) >= of:
                    del parts[r.id]
                    docs.append(Document(r.id, join(sorted(got.values())), md))
            for k in range(0, len(docs), limit):
                sent = True
                yield name, docs[k:k + limit]
        if parts:
            doc_id, (of, _, got) = next(iter(parts.items()))
            raise invalid(f"document {doc_id[:80]!r}: {len(got)} of its {of} passages arrived, and "
                          f"{len(parts) - 1} more documents are incomplete (is the export truncated?)")
        if not sent:
            yield name, []  # an empty collection still makes a (valid) stream


@dataclass
class _Count:
    requests: int = 0
    rows: int = 0
    documents: int = 0


def _nothing() -> Iterator[list[dict]]:
    yield from ()


def _next_rows(pages: Iterator[list[dict]]) -> list[Row] | None:
    """Compute-thread side: the next page, as Rows."""
    page = next(pages, None)
    if page is None:
        return None
    return [Row(r["id"], r["text"], json.dumps(r["metadata"] or {}, ensure_ascii=False, separators=(",", ":")),
                np.asarray(r["dense"], dtype="<f4").tobytes(), r.get("chunk", 0), r.get("of", 0), r.get("start", 0))
            for r in page]


def _check(record: Record) -> None:
    if record.format_version != FORMAT_VERSION:
        raise invalid(f"the export is format version {record.format_version}; this server reads version "
                      f"{FORMAT_VERSION}" + (" (upgrade Tandem to import it)" if record.format_version > FORMAT_VERSION
                                             else " (is this a Tandem export?)"))
    if not record.embedder or record.dimension <= 0:
        raise invalid("the record names no embedder or dimension (is this a Tandem export?)")


def _checked(meta: CollectionMeta, page: list[Row], where: str) -> list[dict]:
    """Compute-thread side: one message's rows as the store writes them, each checked."""
    rows = [_stored(r, meta, f"{where}: rows[{i}]") for i, r in enumerate(page)]
    keys = [(r["id"], r.get("chunk", 0)) for r in rows]
    if len(set(keys)) != len(keys):
        raise invalid(f"{where}: a row appears more than once in this message")
    return rows


def _chunking(c: tuple[int, int] | None) -> str:
    return f"{c[0]} tokens, {c[1]} overlap" if c else "none (whole documents)"


def _metadata(text: str, where: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError as exc:
        raise invalid(f"{where}: metadata_json is not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise invalid(f"{where}: metadata_json must hold a JSON object, not {type(value).__name__}")
    return validation.metadata(value, where)


def _stored(r: Row, meta: CollectionMeta, where: str) -> dict:
    """One row as the store writes it, checked: what Upsert would have accepted, and a vector of the right size."""
    at = f"{where} (id {r.id[:80]!r})"
    validation.doc_id(r.id, where)
    validation.text(f"{at}.text", r.text, MAX_TEXT_CHARS)
    if len(r.dense) != 4 * meta.dimension:
        raise invalid(f"{at}: dense holds {len(r.dense)} bytes; dimension {meta.dimension} needs "
                      f"{4 * meta.dimension} (little-endian float32)")
    dense = np.frombuffer(r.dense, dtype="<f4")
    if not np.isfinite(dense).all():
        raise invalid(f"{at}: dense holds a NaN or an infinity")
    out = {"id": r.id, "text": r.text, "metadata": _metadata(r.metadata_json, at), "dense": dense.tolist()}
    if meta.chunking:
        if not 0 <= r.chunk < r.of:
            raise invalid(f"{at}: passage {r.chunk} of {r.of} is not a passage (chunk must be below of)")
        out.update(chunk=r.chunk, of=r.of, start=r.start)
    elif r.of:
        raise invalid(f"{at}: a passage (of = {r.of}) in an unchunked collection")
    return out
