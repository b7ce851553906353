"""What the clients send and return: plain dataclasses in, plain dataclasses out, one builder per call.

Shared by `tandem.Client` and `tandem.AsyncClient`, so the two differ only in how they wait."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from google.protobuf import json_format, struct_pb2

from tandem.filters import to_proto
from tandem.v1 import document_pb2, embed_pb2, index_pb2, rerank_pb2, search_pb2

MODES = {"dense": search_pb2.SEARCH_MODE_DENSE, "hybrid": search_pb2.SEARCH_MODE_HYBRID,
         "sparse": search_pb2.SEARCH_MODE_SPARSE}



def plain(value):
    """JSON as it was stored: protobuf's Struct holds every number as a double, so 1962 comes back as 1962.0;
    whole numbers that a double holds exactly become ints again."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value

@dataclass
class Document:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass
class Hit:
    id: str
    score: float
    text: str
    metadata: dict
    recall_score: float = 0.0
    recall_rank: int = 0
    passage: str = ""  # chunked collections: the best passage and its offset in text
    passage_offset: int = 0


class SearchResults(list):
    """The hits, best first; also `.reranked`, `.degraded_reason`, `.timings` and the raw `.response`."""

    def __init__(self, response: search_pb2.SearchResponse):
        super().__init__(Hit(h.id, h.score, h.text, plain(json_format.MessageToDict(h.metadata)), h.recall_score,
                             h.recall_rank, h.passage, h.passage_offset) for h in response.hits)
        self.response = response
        self.reranked = response.reranked
        self.degraded_reason = response.degraded_reason
        self.timings = response.timings


@dataclass
class RerankResult:
    index: int  # position of the document in the request
    score: float
    document: str = ""


def document(d: Document | Mapping[str, Any]) -> document_pb2.Document:
    if isinstance(d, document_pb2.Document):
        return d
    if isinstance(d, Document):
        d = {"id": d.id, "text": d.text, "metadata": d.metadata}
    md = struct_pb2.Struct()
    md.update(d.get("metadata") or {})
    return document_pb2.Document(id=str(d["id"]), text=d["text"], metadata=md)


def batches(documents: Iterable, size: int) -> Iterable[list[document_pb2.Document]]:
    part = []
    for d in documents:
        part.append(document(d))
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def create_collection(name: str, embedder: str | None, language: str | None, chunk_tokens: int | None,
                      chunk_overlap: int) -> index_pb2.CreateCollectionRequest:
    chunking = index_pb2.Chunking(max_tokens=chunk_tokens, overlap_tokens=chunk_overlap) if chunk_tokens else None
    return index_pb2.CreateCollectionRequest(collection=name, embedder=embedder or "", language=language or "",
                                             chunking=chunking)


def search(collection: str, query: str, top_n: int, mode: str, filter, rerank, recall_k: int,
           require_rerank: bool, exclude_text: bool, rerank_depth: int = 0,
           max_tokens_per_doc: int = 0) -> search_pb2.SearchRequest:
    """`rerank`: None (the server default: on), True/False, a reranker name, or a cascade as
    [(model, keep), ...]."""
    if mode not in MODES:
        raise ValueError(f"mode is {mode!r}; use one of {', '.join(MODES)}")
    req = search_pb2.SearchRequest(collection=collection, query=query, top_n=top_n, recall_k=recall_k,
                                   mode=MODES[mode], require_rerank=require_rerank, exclude_text=exclude_text,
                                   rerank_depth=rerank_depth, max_tokens_per_doc=max_tokens_per_doc)
    f = to_proto(filter)
    if f is not None:
        req.filter.CopyFrom(f)
    if isinstance(rerank, bool):
        req.rerank = rerank
    elif isinstance(rerank, str):
        req.reranker = rerank
    elif rerank is not None:
        req.rerank_stages.extend(search_pb2.RerankStage(model=m, keep=k) for m, k in rerank)
    return req


def rerank(query: str, documents: list[str], top_n: int, model: str | None, raw_scores: bool,
           chunk: bool, return_documents: bool) -> rerank_pb2.RerankRequest:
    return rerank_pb2.RerankRequest(
        query=query, documents=list(documents), top_n=top_n, model=model or "", raw_scores=raw_scores,
        return_documents=return_documents,
        long_documents=rerank_pb2.LONG_DOCUMENTS_CHUNK if chunk else rerank_pb2.LONG_DOCUMENTS_TRUNCATE)


class RerankResults(list):
    """The results, best first; also `.model`, `.usage` and the raw `.response`."""

    def __init__(self, response: rerank_pb2.RerankResponse):
        super().__init__(RerankResult(x.index, x.relevance_score, x.document) for x in response.results)
        self.response, self.model, self.usage = response, response.model, response.usage


def embed(texts: list[str], model: str | None) -> embed_pb2.EmbedRequest:
    return embed_pb2.EmbedRequest(texts=list(texts), model=model or "")


def vectors(r: embed_pb2.EmbedResponse) -> list[list[float]]:
    return [list(e.values) for e in r.embeddings]
