"""`tandem ingest`: stream a BEIR-style corpus.jsonl into a collection over UpsertStream."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
from google.protobuf import struct_pb2
from tqdm import tqdm

from server.client import channel
from tandem.v1 import document_pb2, index_pb2, index_pb2_grpc


def read_corpus(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def to_document(row: dict) -> document_pb2.Document:
    """BEIR convention: the text that is embedded is `title + " " + text`."""
    title, text = row.get("title") or "", row.get("text") or ""
    md = struct_pb2.Struct()
    meta = {"title": title, **(row.get("metadata") or {})}
    md.update(meta)
    return document_pb2.Document(id=str(row["_id"]), text=f"{title} {text}".strip(), metadata=md)


def ingest(target: str, collection: str, corpus: Path, *, batch: int = 64, create: bool = True,
           progress: bool = True, token: str = "", tls: bool = False, tls_ca: str = "", language: str = "",
           chunk_tokens: int = 0, chunk_overlap: int = 0) -> dict:
    """Create the collection (chunked when chunk_tokens is set) unless it exists, and stream the corpus."""
    total = sum(1 for _ in read_corpus(corpus))
    with channel(target, tls=tls, tls_ca=tls_ca, token=token) as ch:
        stub = index_pb2_grpc.IndexServiceStub(ch)
        if create:
            try:
                chunking = index_pb2.Chunking(max_tokens=chunk_tokens, overlap_tokens=chunk_overlap) \
                    if chunk_tokens else None
                stub.CreateCollection(index_pb2.CreateCollectionRequest(collection=collection, language=language,
                                                                        chunking=chunking), timeout=60)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
        bar = tqdm(total=total, unit="doc", desc=f"ingest {collection}", disable=not progress, file=sys.stderr)

        skipped = []

        def messages():
            chunk = []
            for row in read_corpus(corpus):
                doc = to_document(row)
                if not doc.text.strip():  # the server refuses empty text; say so instead of failing
                    skipped.append(doc.id)
                    bar.update(1)
                    continue
                chunk.append(doc)
                if len(chunk) == batch:
                    yield index_pb2.UpsertStreamRequest(collection=collection, documents=chunk)
                    bar.update(len(chunk))
                    chunk = []
            if chunk:
                yield index_pb2.UpsertStreamRequest(collection=collection, documents=chunk)
                bar.update(len(chunk))

        start = time.perf_counter()
        resp = stub.UpsertStream(messages(), timeout=24 * 3600)
        seconds = time.perf_counter() - start
        bar.close()
    return {"documents": resp.upserted, "passages": resp.passages, "messages": resp.requests, "seconds": seconds,
            "skipped_empty": skipped, "docs_per_second": resp.upserted / seconds if seconds else 0.0,
            "passages_per_second": resp.passages / seconds if seconds else 0.0}


def _run(args) -> int:
    r = ingest(args.target, args.collection, Path(args.corpus), batch=args.batch,
               token=args.token, tls=args.tls, tls_ca=args.tls_ca, language=args.language,
               chunk_tokens=args.chunk_tokens, chunk_overlap=args.chunk_overlap)
    print(f"ingested {r['documents']} documents ({r['passages']} passages) in {r['seconds']:.1f}s "
          f"({r['docs_per_second']:.1f} docs/s, {r['passages_per_second']:.1f} passages/s)")
    if r["skipped_empty"]:
        print(f"skipped {len(r['skipped_empty'])} documents with no text: {', '.join(r['skipped_empty'][:10])}")
    return 0


def add_client_flags(p) -> None:
    p.add_argument("--target", default="127.0.0.1:50051", help="server address")
    p.add_argument("--token", default="", help="bearer token, when the server requires one")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--tls-ca", default="", help="CA bundle for --tls")


def add_parser(sub) -> None:
    p = sub.add_parser("ingest", help="stream a BEIR corpus.jsonl into a collection")
    p.add_argument("corpus", help="path to corpus.jsonl (or a BEIR folder containing it)")
    p.add_argument("--collection", required=True)
    p.add_argument("--batch", type=int, default=64, help="documents per stream message")
    p.add_argument("--language", default="", help="BM25 analyzer of a new collection (default english)")
    p.add_argument("--chunk-tokens", type=int, default=0,
                   help="create a chunked collection: passages of at most N embedder tokens (default: one row "
                        "per document)")
    p.add_argument("--chunk-overlap", type=int, default=0, help="tokens each passage overlaps the previous by")
    add_client_flags(p)

    def run(args):
        c = Path(args.corpus)
        args.corpus = str(c / "corpus.jsonl" if c.is_dir() else c)
        return _run(args)

    p.set_defaults(fn=run)
