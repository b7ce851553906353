"""Long documents: passage indexing at ingest, best-passage recall and rerank in Search, and chunked Rerank.

A real server over loopback gRPC, Milvus Lite in a temp dir, the bundled embedder and a MiniLM-shaped
cross-encoder saved to disk; the long documents are built from Cranfield and CISI (tests/support/longdocs.py)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import torch

from tandem.server.chunking import Splitter, join, windows
from tandem.evaluate import score
from tandem.v1 import document_pb2, index_pb2, rerank_pb2, search_pb2
from tests.support.checkpoints import bundled_encoder
from tests.support.stubs import Stubs
from tests.support.longdocs import cranfield, lengthen
from tests.support.serverproc import REFERENCE_RERANKER, ServerProcess

CHUNKING = index_pb2.Chunking(max_tokens=128, overlap_tokens=16)
# The module's server embeds some thousand passages: on a CPU three times slower than the dev VM that is
# several minutes, so the per-test limit here is wide (the fixture's first user pays for it).
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_encoder())


@pytest.fixture(scope="module")
def srv(make_module_server, tmp_path_factory, minilm_ce):
    d = tmp_path_factory.mktemp("chunking")
    s = make_module_server("--reranker", minilm_ce, *REFERENCE_RERANKER, "--milvus-uri", str(d / "m.db"),
                           "--max-windows-per-document", "12", dir=d)
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def st(srv):
    with srv.channel() as ch:
        yield Stubs(ch)


def _create(st, name, chunking=None):
    return st.index.CreateCollection(index_pb2.CreateCollectionRequest(collection=name, chunking=chunking),
                                     timeout=60).info


def _stream(st, name, docs, batch=32):
    msgs = (index_pb2.UpsertStreamRequest(collection=name, documents=[
        document_pb2.Document(id=d["id"], text=d["text"]) for d in docs[i:i + batch]])
        for i in range(0, len(docs), batch))
    return st.index.UpsertStream(msgs, timeout=1800)


def _describe(st, name):
    return st.index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection=name), timeout=60).info


# -- splitting ---------------------------------------------------------------------------------------------------

def test_windows_cover_the_text_on_word_boundaries_and_join_back(tokenizer):
    docs, _, _ = cranfield(queries=5, extra=0)
    text = " ".join(d["text"] for d in docs[:12])
    sp = Splitter(tokenizer)
    ws = sp.split(text, 64, 12)
    assert len(ws) > 10 and ws[0].start == 0 and ws[-1].end == len(text)
    assert all(w.tokens <= 64 for w in ws)
    # Read alone, a window is the same tokens again: nothing is cut mid-word, so nothing is truncated.
    assert all(sp.count(w.of(text)) == w.tokens for w in ws)
    assert all(a.start < b.start < a.end for a, b in zip(ws, ws[1:]))  # each overlaps the one before
    assert join([(w.start, w.of(text)) for w in ws]) == text
    assert sp.split("short text", 64, 12) == [windows([(0, 5), (6, 10)], 10, 64, 12)[0]]
    # Text without word breaks still splits (mid-word), covers everything and joins back.
    cjk = "長" * 300
    ws = sp.split(cjk, 64, 8)
    assert all(w.tokens <= 64 for w in ws) and join([(w.start, w.of(cjk)) for w in ws]) == cjk


# -- recall over passages: the nDCG comparison -------------------------------------------------------------------

@pytest.fixture(scope="module")
def three(st, tokenizer):
    """Plain abstracts, long documents chunked, long documents unchunked: the same documents and queries."""
    docs, queries, qrels = cranfield(queries=15, extra=30)
    long = lengthen(docs, lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]))
    for name, chunking, corpus in (("plain", None, docs), ("long_chunked", CHUNKING, long),
                                   ("long_whole", None, long)):
        _create(st, name, chunking)
        r = _stream(st, name, corpus)
        assert r.upserted == len(corpus)
    return docs, long, queries, qrels


def _run(st, name, queries, **kw):
    run, hits = {}, {}
    for qid, q in queries.items():
        r = st.search.Search(search_pb2.SearchRequest(collection=name, query=q, top_n=10, recall_k=10, **kw),
                             timeout=120)
        run[qid] = {h.id: float(10 - i) for i, h in enumerate(r.hits)}
        hits[qid] = r.hits
    return run, hits


def test_chunking_finds_what_sits_past_the_first_1000_tokens(st, three):
    docs, long, queries, qrels = three
    ndcg = {name: score(_run(st, name, queries, rerank=False)[0], qrels)["nDCG@10"]
            for name in ("plain", "long_chunked", "long_whole")}
    print("nDCG@10 dense, no rerank:", ndcg)
    # The lead is library science: unchunked, the embedder reads nothing of the aeronautics.
    assert ndcg["long_whole"] < 0.25 * ndcg["plain"], ndcg
    assert ndcg["long_chunked"] >= 0.85 * ndcg["plain"], ndcg


def test_chunked_hits_carry_the_best_passage_and_the_whole_document(st, three):
    docs, long, queries, qrels = three
    by_id = {d["id"]: d for d in long}
    info = _describe(st, "long_chunked")
    assert info.documents == len(long) and info.passages > 5 * len(long) and info.row_count == info.passages
    assert (info.chunking.max_tokens, info.chunking.overlap_tokens) == (128, 16)
    plain = _describe(st, "plain")
    assert plain.documents == plain.passages == plain.row_count == len(docs)
    found = 0
    for qid, q in list(queries.items())[:10]:
        r = st.search.Search(search_pb2.SearchRequest(collection="long_chunked", query=q, top_n=5, recall_k=20),
                             timeout=120)
        assert r.reranked and len({h.id for h in r.hits}) == len(r.hits)  # one hit per document
        for h in r.hits:
            d = by_id[h.id]
            assert h.text == d["text"]  # the whole document, joined back from its passages
            assert d["text"][h.passage_offset:].startswith(h.passage)
            found += h.id in qrels[qid] and h.passage_offset + len(h.passage) > d["lead_chars"]
        lean = st.search.Search(search_pb2.SearchRequest(collection="long_chunked", query=q, top_n=5, recall_k=20,
                                                         exclude_text=True), timeout=120)
        assert all(h.text == "" and h.passage for h in lean.hits)
    assert found >= 5  # relevant documents found by a passage from past the filler


@pytest.mark.parametrize("mode", [search_pb2.SEARCH_MODE_SPARSE, search_pb2.SEARCH_MODE_HYBRID])
def test_sparse_and_hybrid_group_passages_by_document(st, three, mode):
    docs, long, queries, qrels = three
    q = next(iter(queries.values()))
    r = st.search.Search(search_pb2.SearchRequest(collection="long_chunked", query=q, top_n=10, recall_k=30,
                                                  mode=mode, rerank=False), timeout=120)
    assert len(r.hits) == 10 and len({h.id for h in r.hits}) == 10
    assert all(h.passage and h.text for h in r.hits)


def test_filters_apply_to_documents_in_a_chunked_collection(st):
    _create(st, "filtered", CHUNKING)
    long = "boundary layer flow over a heated flat plate. " * 80
    docs = [document_pb2.Document(id=f"f{i}", text=long + f" number {i}") for i in range(6)]
    for i, d in enumerate(docs):
        d.metadata.update({"parity": "even" if i % 2 == 0 else "odd"})
    st.index.Upsert(index_pb2.UpsertRequest(collection="filtered", documents=docs), timeout=120)
    from tandem.v1 import filter_pb2
    from google.protobuf import struct_pb2

    f = filter_pb2.Filter(all=[filter_pb2.Condition(field="parity", op=filter_pb2.Operator.OPERATOR_EQ,
                                                    value=struct_pb2.Value(string_value="even"))])
    r = st.search.Search(search_pb2.SearchRequest(collection="filtered", query="heated plate", top_n=6, filter=f),
                         timeout=120)
    assert sorted(h.id for h in r.hits) == ["f0", "f2", "f4"]


# -- writes ------------------------------------------------------------------------------------------------------

def test_reupsert_with_fewer_passages_and_delete_leave_no_orphan(st, tokenizer):
    _create(st, "orphans", CHUNKING)
    long = " ".join(d["text"] for d in cranfield(queries=3, extra=0)[0][:10])
    ids = ["doc'1#2", "other"]  # a quote and a '#' in an id are stored escaped and come back as sent
    st.index.Upsert(index_pb2.UpsertRequest(collection="orphans", documents=[
        document_pb2.Document(id=ids[0], text=long), document_pb2.Document(id=ids[1], text="a short one")]),
        timeout=120)
    n = len(Splitter(tokenizer).split(long, 128, 16))
    info = _describe(st, "orphans")
    assert (info.documents, info.passages) == (2, n + 1)
    r = st.index.Upsert(index_pb2.UpsertRequest(collection="orphans", documents=[
        document_pb2.Document(id=ids[0], text="now it is short")]), timeout=60)
    assert (r.upserted, r.passages) == (1, 1)
    info = _describe(st, "orphans")
    assert (info.documents, info.passages) == (2, 2)
    hit = st.search.Search(search_pb2.SearchRequest(collection="orphans", query="now it is short", top_n=1,
                                                    rerank=False), timeout=60).hits[0]
    assert (hit.id, hit.text, hit.passage) == (ids[0], "now it is short", "now it is short")
    st.index.Delete(index_pb2.DeleteRequest(collection="orphans", ids=[ids[0]]), timeout=60)
    info = _describe(st, "orphans")
    assert (info.documents, info.passages) == (1, 1)


def test_chunked_collections_take_documents_past_the_field_limit_and_check_their_settings(st):
    big = "supersonic flow over a cone at incidence. " * 2500  # 107,500 characters
    with pytest.raises(grpc.RpcError) as e:  # one row per document: one text field
        st.index.Upsert(index_pb2.UpsertRequest(collection="plain", documents=[
            document_pb2.Document(id="big", text=big)]), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _create(st, "big", CHUNKING)
    r = st.index.Upsert(index_pb2.UpsertRequest(collection="big", documents=[
        document_pb2.Document(id="big", text=big)]), timeout=300)
    assert r.passages > 100
    hit = st.search.Search(search_pb2.SearchRequest(collection="big", query="cone at incidence", top_n=1,
                                                    rerank=False), timeout=60).hits[0]
    assert hit.text == big
    for chunking, words in ((index_pb2.Chunking(max_tokens=8), "16 to 254"),
                            (index_pb2.Chunking(max_tokens=1000), "16 to 254"),
                            (index_pb2.Chunking(max_tokens=64, overlap_tokens=32), "less than half")):
        with pytest.raises(grpc.RpcError) as e:
            _create(st, "bad_chunking", chunking)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details()


def test_kill9_during_chunked_streams_keeps_every_acknowledged_document_whole(make_server, tmp_path, tiny_ce):
    docs, _, _ = cranfield(queries=10, extra=40)
    texts = [d["text"] for d in docs]
    # Documents of 1-4 abstracts: several passages each.
    corpus = [{"id": f"d{i}", "text": " ".join(texts[i:i + 1 + i % 4])} for i in range(len(texts))]
    args = ("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "crash.db"), "--warmup", "false")
    s = make_server(*args, dir=tmp_path)
    acked: list[dict] = []
    with s.channel() as ch:
        st = Stubs(ch)
        _create(st, "c", CHUNKING)
        stop = threading.Event()

        def streams():  # short streams, one after another; each one's documents are acknowledged when it returns
            for i in range(0, len(corpus), 6):
                part = corpus[i:i + 6]
                try:
                    _stream(st, "c", part, batch=3)
                except grpc.RpcError:
                    return
                acked.extend(part)
                if stop.is_set():
                    return

        t = threading.Thread(target=streams)
        t.start()
        deadline = time.monotonic() + 120
        while len(acked) < 18 and time.monotonic() < deadline:
            time.sleep(0.05)
        s.kill()
        stop.set()
        t.join()
    assert len(acked) >= 18
    s2 = make_server(*args, log_name="restart.log", dir=tmp_path)
    try:
        with s2.channel() as ch:
            st = Stubs(ch)
            assert _describe(st, "c").documents >= len(acked)
            for d in acked:
                r = st.search.Search(search_pb2.SearchRequest(collection="c", query=d["text"][:300], top_n=3,
                                                              recall_k=20, rerank=False), timeout=60)
                got = {h.id: h.text for h in r.hits}
                assert got.get(d["id"]) == d["text"], d["id"]  # present, and whole
    finally:
        s2.terminate()


# -- Rerank of caller-supplied long documents --------------------------------------------------------------------

def test_chunked_rerank_scores_a_document_by_its_best_window(st, minilm_ce):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(minilm_ce, device="cpu")
    docs, queries, _ = cranfield(queries=3, extra=0)
    q = next(iter(queries.values()))
    long = " ".join(d["text"] for d in docs[:8])
    sent = [long, docs[9]["text"], docs[10]["text"][:50]]
    r = st.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=sent, raw_scores=True,
                                                  long_documents=rerank_pb2.LONG_DOCUMENTS_CHUNK), timeout=120)
    sp = Splitter(ce.tokenizer)
    room = ce.max_length - sp.count(q) - sp.special_tokens(pair=True)
    split = [sp.split(d, room, min(32, room // 4)) for d in sent]
    assert len(split[0]) >= 3 and r.usage.windows == sum(map(len, split)) == r.usage.pairs
    assert r.usage.truncated == 0
    for res in r.results:
        ws = split[res.index]
        scores = [ce.predict([(q, w.of(sent[res.index]))], activation_fn=torch.nn.Identity())[0] for w in ws]
        assert abs(res.relevance_score - max(scores)) < 1e-4
        best = ws[int(np.argmax(scores))]
        assert (res.window_offset, res.window_length) == (best.start, best.end - best.start)
    # Truncation stays the default: the long document is scored from its opening.
    t = st.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=sent[:1], raw_scores=True), timeout=120)
    assert t.usage.truncated == 1 and t.usage.windows == 0
    assert abs(t.results[0].relevance_score - ce.predict([(q, long)], activation_fn=torch.nn.Identity())[0]) < 1e-4


def test_chunked_rerank_caps_windows_per_document(st):
    huge = "transition of the laminar boundary layer at high mach numbers. " * 600
    with pytest.raises(grpc.RpcError) as e:
        st.rerank.Rerank(rerank_pb2.RerankRequest(query="transition", documents=["short", huge],
                                                  long_documents=rerank_pb2.LONG_DOCUMENTS_CHUNK), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[1]" in e.value.details() and "the limit is 12" in e.value.details()
    assert "--max-windows-per-document" in e.value.details()
