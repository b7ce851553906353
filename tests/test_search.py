"""IndexService, SearchService and EmbedService end to end: real server, Milvus Lite in a temp dir."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2

from tandem.v1 import document_pb2, embed_pb2, filter_pb2, index_pb2, search_pb2
from tests.support.data import load_beir
from tests.support.messages import cond, struct
from tests.support.serverproc import ServerProcess

Op = filter_pb2.Operator
M = search_pb2.SearchMode
COLL = "cranfield_small"


def docs_from(corpus):
    return [document_pb2.Document(id=d["_id"], text=f"{d['title']} {d['text']}".strip(),
                                  metadata=struct({"title": d["title"], "n": int(d["_id"]),
                                                   "parity": "even" if int(d["_id"]) % 2 == 0 else "odd",
                                                   "quote": 'say "hi" \\ ok'}))
            for d in corpus]


@pytest.fixture(scope="module")
def corpus():
    return load_beir("cranfield", limit=200)[0]


@pytest.fixture(scope="module")
def collection(stubs, corpus):
    stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection=COLL), timeout=30)
    docs = docs_from(corpus)
    r = stubs.index.Upsert(index_pb2.UpsertRequest(collection=COLL, documents=docs[:100]), timeout=120)
    assert r.upserted == 100 and r.usage.pairs == 100
    msgs = (index_pb2.UpsertStreamRequest(collection=COLL, documents=docs[i:i + 25]) for i in range(100, 200, 25))
    s = stubs.index.UpsertStream(msgs, timeout=120)
    assert (s.upserted, s.requests) == (100, 4)
    return COLL


def search(stubs, **kw):
    kw.setdefault("collection", COLL)
    return stubs.search.Search(search_pb2.SearchRequest(**kw), timeout=60)


def test_collection_lifecycle(stubs, collection):
    assert COLL in stubs.index.ListCollections(index_pb2.ListCollectionsRequest(), timeout=10).collections
    info = stubs.index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection=COLL), timeout=10).info
    assert info.row_count == 200 and info.dimension == 384
    assert info.embedder == "sentence-transformers/all-MiniLM-L6-v2"
    # The embedded milvus-lite 2.5 builds AUTOINDEX (its local mode has no HNSW); a Milvus server, HNSW.
    assert info.index_type == "AUTOINDEX" and info.metric_type == "COSINE" and info.index_params
    assert info.language == "english"
    with pytest.raises(grpc.RpcError) as e:
        stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection=COLL), timeout=10)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="scratch"), timeout=10)
    stubs.index.DropCollection(index_pb2.DropCollectionRequest(collection="scratch"), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        stubs.index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection="scratch"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("mode", [M.SEARCH_MODE_DENSE, M.SEARCH_MODE_HYBRID, M.SEARCH_MODE_SPARSE])
def test_search_modes_find_a_document_by_its_title(stubs, collection, corpus, mode):
    target = corpus[42]
    r = search(stubs, query=target["title"], mode=mode, top_n=5, recall_k=20, rerank=False)
    assert not r.reranked and 0 < len(r.hits) <= 5 and r.recalled == 20
    assert target["_id"] in [h.id for h in r.hits[:3]]
    h = r.hits[0]
    assert h.text and h.metadata["title"] and h.score == h.recall_score and h.recall_rank == 0
    assert [x.recall_rank for x in r.hits] == list(range(len(r.hits)))
    assert r.timings.total_seconds >= r.timings.recall_seconds > 0
    if mode == M.SEARCH_MODE_SPARSE:
        assert r.timings.embed_seconds < 0.005 and h.recall_score > 0  # no embedding; BM25 positive


def test_search_reranks_by_default(stubs, collection, corpus):
    r = search(stubs, query=corpus[7]["title"], top_n=5, recall_k=30)
    assert r.reranked and len(r.hits) == 5 and r.recalled == 30
    scores = [h.score for h in r.hits]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert r.timings.rerank_seconds > 0
    assert len({h.recall_rank for h in r.hits}) == 5


def test_rerank_depth_and_tokens_per_document(stubs, collection, corpus, tiny_ce):
    from tandem.server.chunking import Splitter
    from tandem.v1 import info_pb2, rerank_pb2
    from transformers import AutoTokenizer

    limits = stubs.info.Info(info_pb2.InfoRequest(), timeout=10).limits
    assert (limits.rerank_depth, limits.max_tokens_per_doc) == (50, 128)  # the CPU defaults (server/config.py)
    q = corpus[7]["title"]
    recall = search(stubs, query=q, top_n=10, recall_k=10, rerank=False).hits
    r = search(stubs, query=q, top_n=10, recall_k=10, rerank_depth=3)
    assert r.reranked
    # The best three of recall are reranked among themselves; the rest follow in recall order, with score 0.
    assert sorted(h.recall_rank for h in r.hits[:3]) == [0, 1, 2]
    assert [h.score for h in r.hits[:3]] == sorted((h.score for h in r.hits[:3]), reverse=True)
    assert [h.id for h in r.hits[3:]] == [h.id for h in recall[3:]] and all(h.score == 0 for h in r.hits[3:])
    # A token budget scores each document's opening: the same score as sending that opening alone.
    doc = corpus[7]["text"] * 3
    head = Splitter(AutoTokenizer.from_pretrained(tiny_ce)).head(doc, 12)
    assert 0 < len(head) < len(doc) and doc.startswith(head)
    cut = stubs.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=[doc], max_tokens_per_doc=12,
                                                       raw_scores=True, return_documents=True), timeout=30)
    alone = stubs.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=[head], raw_scores=True), timeout=30)
    assert cut.results[0].relevance_score == pytest.approx(alone.results[0].relevance_score, abs=1e-5)
    assert cut.results[0].document == doc  # the document comes back whole
    whole = stubs.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=[doc], raw_scores=True), timeout=30)
    assert whole.results[0].relevance_score != pytest.approx(cut.results[0].relevance_score, abs=1e-4)


def test_filters(stubs, collection):
    q = "boundary layer"
    even = search(stubs, query=q, recall_k=50, top_n=50, rerank=False,
                  filter=filter_pb2.Filter(all=[cond("parity", Op.OPERATOR_EQ, "even")]))
    assert even.hits and all(int(h.id) % 2 == 0 for h in even.hits)
    rng = search(stubs, query=q, recall_k=50, top_n=50, rerank=False, mode=M.SEARCH_MODE_HYBRID,
                 filter=filter_pb2.Filter(all=[cond("n", Op.OPERATOR_GTE, 50), cond("n", Op.OPERATOR_LT, 60)]))
    assert rng.hits and all(50 <= int(h.id) < 60 for h in rng.hits)
    ins = search(stubs, query=q, recall_k=50, top_n=50, rerank=False, mode=M.SEARCH_MODE_SPARSE,
                 filter=filter_pb2.Filter(any=[cond("n", Op.OPERATOR_IN, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])]))
    assert {h.id for h in ins.hits} <= {str(i) for i in range(1, 11)}
    none = search(stubs, query=q, recall_k=50, top_n=50, rerank=False,
                  filter=filter_pb2.Filter(none=[cond("parity", Op.OPERATOR_EQ, "odd")]))
    assert none.hits and all(int(h.id) % 2 == 0 for h in none.hits)
    quoted = search(stubs, query=q, recall_k=10, rerank=False,
                    filter=filter_pb2.Filter(all=[cond("quote", Op.OPERATOR_EQ, 'say "hi" \\ ok'),
                                                  cond("title", Op.OPERATOR_EXISTS)]))
    assert len(quoted.hits) == 10
    missing = search(stubs, query=q, recall_k=10, rerank=False,
                     filter=filter_pb2.Filter(all=[cond("no_such_key", Op.OPERATOR_EXISTS)]))
    assert len(missing.hits) == 0


def test_filter_text_reads_as_the_cli_writes_and_joins_the_structured_filter(stubs, collection):
    q = "boundary layer"
    structured = search(stubs, query=q, recall_k=50, top_n=50, rerank=False, filter=filter_pb2.Filter(
        all=[cond("parity", Op.OPERATOR_EQ, "even"), cond("n", Op.OPERATOR_GTE, 20), cond("n", Op.OPERATOR_LT, 70)]))
    text = search(stubs, query=q, recall_k=50, top_n=50, rerank=False, filter_text="parity = even; n >= 20\nn<70")
    both = search(stubs, query=q, recall_k=50, top_n=50, rerank=False, filter_text="n >= 20; n<70",
                  filter=filter_pb2.Filter(all=[cond("parity", Op.OPERATOR_EQ, "even")]))
    assert structured.hits and [h.id for h in text.hits] == [h.id for h in structured.hits] == [h.id for h in both.hits]
    assert all(int(h.id) % 2 == 0 and 20 <= int(h.id) < 70 for h in text.hits)
    for bad, words in (("n >= 20; 7up = 1", "condition 2: cannot read filter '7up = 1'"),
                       ("tag in ", "condition 1"), ("n = 1;" * 33, "limit is 32")):
        with pytest.raises(grpc.RpcError) as e:
            search(stubs, query=q, filter_text=bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details(), e.value.details()


@pytest.mark.parametrize("f, words", [
    (filter_pb2.Filter(all=[cond('x"] or 1==1 or metadata["y', Op.OPERATOR_EQ, "a")]), "not a metadata key path"),
    (filter_pb2.Filter(all=[cond("id", Op.OPERATOR_UNSPECIFIED, "a")]), "unknown operator"),
    (filter_pb2.Filter(all=[cond("n", Op.OPERATOR_EQ, [1, 2])]), "single value"),
    (filter_pb2.Filter(all=[cond("n", Op.OPERATOR_IN, 3)]), "non-empty list"),
    (filter_pb2.Filter(all=[cond("n", Op.OPERATOR_EQ)]), "value must be"),
    (filter_pb2.Filter(all=[cond("t", Op.OPERATOR_EQ, 'a" or id != "')]), None),  # a literal, not an escape
    (filter_pb2.Filter(all=[cond("t", Op.OPERATOR_EQ, "line\nbreak")]), "control characters"),
    (filter_pb2.Filter(all=[cond("n", Op.OPERATOR_EQ, float("nan"))]), "finite"),
    (filter_pb2.Filter(all=[cond("n", Op.OPERATOR_EQ, 1)] * 33), "limit is 32"),
])
def test_bad_filters_are_invalid_argument(stubs, collection, f, words):
    if words is None:  # injection attempt inside a string literal matches nothing and widens nothing
        assert len(search(stubs, query="wing", rerank=False, filter=f).hits) == 0
        return
    with pytest.raises(grpc.RpcError) as e:
        search(stubs, query="wing", filter=f)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()


def test_delete(stubs, collection, corpus):
    stubs.index.Upsert(index_pb2.UpsertRequest(collection=COLL, documents=[
        document_pb2.Document(id="tmp-1", text="zebra crossing unique marker text")]), timeout=30)
    for mode in (M.SEARCH_MODE_DENSE, M.SEARCH_MODE_SPARSE):
        r = search(stubs, query="zebra crossing unique marker text", mode=mode, rerank=False, recall_k=50, top_n=50)
        # Milvus Lite keeps BM25 statistics per segment, so a lone new document's BM25 score is damped
        # until it shares a segment with others: it is found, not necessarily first.
        assert "tmp-1" in [h.id for h in r.hits[:10]], mode
    d = stubs.index.Delete(index_pb2.DeleteRequest(collection=COLL, ids=["tmp-1", "never-existed"]), timeout=30)
    assert d.deleted == 2
    for mode in (M.SEARCH_MODE_DENSE, M.SEARCH_MODE_SPARSE):
        r = search(stubs, query="zebra crossing unique marker text", mode=mode, rerank=False, recall_k=50, top_n=50)
        assert "tmp-1" not in [h.id for h in r.hits]


@pytest.mark.parametrize("call, req, code, words", [
    ("search", search_pb2.SearchRequest(collection="nope", query="q"), "NOT_FOUND", "does not exist"),
    ("search", search_pb2.SearchRequest(collection=COLL, query=" "), "INVALID_ARGUMENT", "query is empty"),
    ("search", search_pb2.SearchRequest(collection=COLL, query="q", mode=99), "INVALID_ARGUMENT", "SearchMode"),
    ("search", search_pb2.SearchRequest(collection=COLL, query="q", top_n=50, recall_k=10), "INVALID_ARGUMENT", "top_n"),
    ("search", search_pb2.SearchRequest(collection=COLL, query="q", recall_k=5000), "INVALID_ARGUMENT", "max_recall_k"),
    ("search", search_pb2.SearchRequest(collection="bad name!", query="q"), "INVALID_ARGUMENT", "not a valid name"),
    ("upsert", index_pb2.UpsertRequest(collection="nope", documents=[document_pb2.Document(id="a", text="t")]),
     "NOT_FOUND", "does not exist"),
    ("upsert", index_pb2.UpsertRequest(collection=COLL, documents=[document_pb2.Document(id="a", text="")]),
     "INVALID_ARGUMENT", "text is empty"),
    ("upsert", index_pb2.UpsertRequest(collection=COLL, documents=[document_pb2.Document(id="a" * 600, text="t")]),
     "INVALID_ARGUMENT", "limit is 512"),
    ("upsert", index_pb2.UpsertRequest(collection=COLL, documents=[document_pb2.Document(id="a", text="t"),
                                                                   document_pb2.Document(id="a", text="u")]),
     "INVALID_ARGUMENT", "more than once"),
    ("upsert", index_pb2.UpsertRequest(collection=COLL, documents=[]), "INVALID_ARGUMENT", "is empty"),
    ("delete", index_pb2.DeleteRequest(collection="nope", ids=["a"]), "NOT_FOUND", "does not exist"),
    ("create", index_pb2.CreateCollectionRequest(collection="x", embedder="unknown/model"), "NOT_FOUND", "not loaded"),
])
def test_index_and_search_errors(stubs, collection, call, req, code, words):
    fn = {"search": stubs.search.Search, "upsert": stubs.index.Upsert, "delete": stubs.index.Delete,
          "create": stubs.index.CreateCollection}[call]
    with pytest.raises(grpc.RpcError) as e:
        fn(req, timeout=30)
    assert e.value.code().name == code and words in e.value.details()


def test_embed_matches_sentence_transformers(stubs):
    from sentence_transformers import SentenceTransformer

    from tandem.server.models import load_embedder
    from tandem.v1 import info_pb2
    from tests.support.checkpoints import bundled_encoder

    texts = ["a wing in a slipstream", "heat transfer " * 100]
    r = stubs.embed.Embed(embed_pb2.EmbedRequest(texts=texts), timeout=30)
    assert r.dimension == 384 and len(r.embeddings) == 2 and r.usage.truncated == 0
    got = np.array([e.values for e in r.embeddings])
    emb = next(m for m in stubs.info.Info(info_pb2.InfoRequest(), timeout=10).models if m.kind == "embedder")
    if emb.precision == "fp32":  # every backend's fp32 equals sentence-transformers' own to float rounding
        ref = SentenceTransformer(bundled_encoder(), device="cpu").encode(texts, normalize_embeddings=True)
        assert np.abs(got - ref).max() < 1e-5
    else:  # the same backend in-process, each text alone; batching moves a bf16 component by < 2e-3 (measured)
        b = load_embedder(bundled_encoder(), "cpu", False, emb.precision, emb.backend)
        ref = np.stack([b.run([t])[0] for t in texts])
        assert np.abs(got - ref).max() < 5e-3 and (got * ref).sum(1).min() > 0.9999


def test_acknowledged_upserts_survive_kill_and_restart(make_server, tmp_path, tiny_ce, corpus):
    from tandem.v1 import index_pb2_grpc, search_pb2_grpc

    args = ("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "durable.db"), "--warmup", "false")
    s = make_server(*args, dir=tmp_path)
    with s.channel() as ch:
        index_pb2_grpc.IndexServiceStub(ch).CreateCollection(index_pb2.CreateCollectionRequest(collection="d"))
        index_pb2_grpc.IndexServiceStub(ch).Upsert(
            index_pb2.UpsertRequest(collection="d", documents=docs_from(corpus[:50])), timeout=60)
    s.kill()  # SIGKILL: no shutdown hooks, no flush
    s2 = make_server(*args, log_name="server2.log", dir=tmp_path)
    try:
        with s2.channel() as ch:
            info = index_pb2_grpc.IndexServiceStub(ch).DescribeCollection(
                index_pb2.DescribeCollectionRequest(collection="d"), timeout=30).info
            assert info.row_count == 50
            r = search_pb2_grpc.SearchServiceStub(ch).Search(
                search_pb2.SearchRequest(collection="d", query=corpus[3]["title"], rerank=False), timeout=30)
            assert corpus[3]["_id"] in [h.id for h in r.hits[:3]]
    finally:
        s2.terminate()
