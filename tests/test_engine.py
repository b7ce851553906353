"""The engine in-process, with no transport: long-document windows, the cascade and its degradation, rerank depth,
validation. Real models from disk (a tiny cross-encoder under two names, the bundled embedder) and a real embedded
Milvus in a temp dir; the subprocess suites keep transport, signals, kill -9 and metrics."""

from __future__ import annotations

import math

import pytest

from tandem.server.app import assemble, release
from tandem.server.config import Config
from tandem.server.engine import Engine
from tandem.server.engine.cascade import Stage
from tandem.server.engine.index import Document
from tandem.server.engine.search import SearchQuery
from tandem.server.errors import Kind, TandemError, classify
from tandem.server.runtime import Runtime
from tandem.server.storage import CollectionMissing
from tandem.workers import WorkerStopped
from tests.support.checkpoints import bundled_encoder
from tests.support.data import load_beir

COLL = "engine_docs"


@pytest.fixture(scope="module")
async def engine(tiny_ce, tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    cfg = Config(reranker=(f"tiny={tiny_ce}", f"tiny2={tiny_ce}"), embedder=(bundled_encoder(),), backend="torch",
                 precision="fp32", milvus_uri=str(d / "m.db"), cache_dir=str(d / "cache"), allow_download=False,
                 max_windows_per_document=8)
    cfg.validate()
    rt = await assemble(Runtime(cfg))
    e = Engine.over(rt)
    corpus = load_beir("cranfield", limit=40)[0]
    await e.indexer.create(COLL)
    await e.indexer.upsert(COLL, [Document(d["_id"], f"{d['title']} {d['text']}".strip(), {"n": int(d["_id"])})
                                  for d in corpus])
    yield e
    await release(rt)


def kind_of(exc_info) -> Kind:
    """The error's kind, as every transport maps it (worker errors included)."""
    known = classify(exc_info.value)
    assert known is not None, f"{exc_info.value!r} would reach a client as an internal error"
    return known[0]


DOCS = ["the wing stalls at high angles of attack", "boundary layer transition on a flat plate",
        "heat transfer in hypersonic flow", "", "a short one"]


async def test_rerank_sorts_cuts_and_maps_logits_through_the_sigmoid(engine):
    raw = await engine.reranker.score("wing stall", DOCS, raw=True)
    assert sorted(r.index for r in raw.results) == list(range(len(DOCS)))
    logits = [r.score for r in raw.results]
    assert logits == sorted(logits, reverse=True)
    scored = await engine.reranker.score("wing stall", DOCS, top_n=2)
    assert [r.index for r in scored.results] == [r.index for r in raw.results[:2]]
    for s, r in zip(scored.results, raw.results):
        assert s.score == pytest.approx(1 / (1 + math.exp(-r.score)), rel=1e-6)
    assert scored.model == "tiny" and scored.stats.items == len(DOCS) and scored.windows == 0


async def test_chunked_rerank_scores_each_document_by_its_best_window(engine):
    long = " ".join(f"sentence {i} about the flow past a cylinder." for i in range(40))
    out = await engine.reranker.score("cylinder flow", [long, "short text"], chunk=True, raw=True)
    assert out.windows > 2, "the long document was read as several windows"
    by_index = {r.index: r for r in out.results}
    w = by_index[0].window
    assert w is not None and 0 <= w.start < w.end <= len(long)
    # The best window's own score is the document's score.
    alone = await engine.reranker.score("cylinder flow", [long[w.start:w.end]], raw=True)
    assert alone.results[0].score == pytest.approx(by_index[0].score, abs=1e-4)
    with pytest.raises(TandemError) as e:  # more windows than --max-windows-per-document
        await engine.reranker.score("cylinder flow", [long * 4], chunk=True)
    assert kind_of(e) == Kind.INVALID_ARGUMENT and "max-windows-per-document" in e.value.message
    with pytest.raises(TandemError) as e:  # a query that leaves no room beside it
        await engine.reranker.score("word " * 600, [long], chunk=True)
    assert kind_of(e) == Kind.INVALID_ARGUMENT and "Shorten the query" in e.value.message


@pytest.mark.parametrize("call, kind, words", [
    (dict(query=" ", documents=["a"]), Kind.INVALID_ARGUMENT, "query is empty"),
    (dict(query="q", documents=[]), Kind.INVALID_ARGUMENT, "documents is empty"),
    (dict(query="q", documents=["a"], top_n=10**6), Kind.INVALID_ARGUMENT, "top_n"),
    (dict(query="q", documents=["a\x00"]), Kind.INVALID_ARGUMENT, "NUL"),
    (dict(query="q", documents=["a"], model="nope"), Kind.NOT_FOUND, "not loaded"),
])
async def test_rerank_validation(engine, call, kind, words):
    query, documents = call.pop("query"), call.pop("documents")
    with pytest.raises(TandemError) as e:
        await engine.reranker.score(query, documents, **call)
    assert kind_of(e) == kind and words in e.value.message


async def test_cascade_keeps_and_times_each_stage(engine):
    q = SearchQuery(COLL, "boundary layer", top_n=3, recall_k=20,
                    stages=(Stage("tiny", keep=8), Stage("tiny2", keep=5)))
    out = await engine.retriever.search(q)
    assert out.reranked and not out.degraded_reason and len(out.hits) == 3
    assert [t.model for t in out.timings.rerank_stages] == ["tiny", "tiny2"]
    assert [t.scored for t in out.timings.rerank_stages] == [20, 8]
    scores = [h.score for h in out.hits]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)


async def test_rerank_depth_keeps_recall_order_behind_the_reranked(engine):
    recall = await engine.retriever.search(SearchQuery(COLL, "boundary layer", top_n=10, rerank=False))
    ranked = await engine.retriever.search(SearchQuery(COLL, "boundary layer", top_n=10, rerank_depth=4))
    assert ranked.timings.rerank_stages[0].scored == 4
    assert sorted(h.recall_rank for h in ranked.hits[:4]) == [0, 1, 2, 3]
    assert [h.id for h in ranked.hits[4:]] == [h.id for h in recall.hits[4:]]


@pytest.mark.parametrize("q, words", [
    (SearchQuery(COLL, "x", reranker="tiny", stages=(Stage("tiny"),)), "either reranker"),
    (SearchQuery(COLL, "x", rerank=False, stages=(Stage("tiny"),)), "rerank is false"),
    (SearchQuery(COLL, "x", stages=tuple(Stage("tiny") for _ in range(5))), "at most 4"),
    (SearchQuery(COLL, "x", top_n=10, stages=(Stage("tiny", keep=3),)), "below top_n"),
    (SearchQuery(COLL, "x", top_n=50, recall_k=20), "larger than recall_k"),
    (SearchQuery(COLL, "x", mode="fuzzy"), "not a search mode"),
    (SearchQuery("bad name", "x"), "not a valid name"),
])
async def test_search_validation(engine, q, words):
    with pytest.raises(TandemError) as e:
        await engine.retriever.search(q)
    assert kind_of(e) == Kind.INVALID_ARGUMENT and words in e.value.message


async def test_search_errors_have_their_kinds(engine):
    with pytest.raises(CollectionMissing) as e:
        await engine.retriever.search(SearchQuery("missing_one", "x"))
    assert kind_of(e) == Kind.NOT_FOUND
    with pytest.raises(TandemError) as e:
        await engine.retriever.search(SearchQuery(COLL, "x", reranker="nope"))
    assert kind_of(e) == Kind.NOT_FOUND


async def test_a_draining_server_degrades_rerank_instead_of_failing(engine):
    rt = engine.rt
    rt.draining.set()
    try:
        out = await engine.retriever.search(SearchQuery(COLL, "boundary layer", top_n=5))
        assert not out.reranked and "shutting down" in out.degraded_reason
        assert out.timings.rerank_stages[0].skipped and len(out.hits) == 5
        with pytest.raises(WorkerStopped) as e:
            await engine.retriever.search(SearchQuery(COLL, "boundary layer", require_rerank=True))
        assert kind_of(e) == Kind.UNAVAILABLE
    finally:
        rt.draining.clear()


async def test_recall_only_degrades_or_fails_precondition(engine):
    rt = engine.rt
    saved, rt.rerankers, rt.reranker_missing = rt.rerankers, {}, "this server runs recall-only (test)"
    try:
        out = await engine.retriever.search(SearchQuery(COLL, "boundary layer", top_n=3))
        assert not out.reranked and "no reranker is loaded: this server runs recall-only" in out.degraded_reason
        with pytest.raises(TandemError) as e:
            await engine.retriever.search(SearchQuery(COLL, "boundary layer", require_rerank=True))
        assert kind_of(e) == Kind.FAILED_PRECONDITION
        with pytest.raises(TandemError) as e:
            await engine.reranker.score("q", ["a"])
        assert kind_of(e) == Kind.FAILED_PRECONDITION
    finally:
        rt.rerankers = saved


async def test_index_validation_and_stream(engine):
    with pytest.raises(TandemError) as e:
        await engine.indexer.upsert(COLL, [Document("a", "x", {}), Document("a", "y", {})])
    assert kind_of(e) == Kind.INVALID_ARGUMENT and "more than once" in e.value.message
    with pytest.raises(TandemError) as e:
        await engine.indexer.upsert(COLL, [Document("deep", "x", {"a": {"b": {"c": {"d": {"e": {"f": {"g": {
            "h": {"i": 1}}}}}}}}})])
    assert kind_of(e) == Kind.INVALID_ARGUMENT and "nests" in e.value.message
    with pytest.raises(TandemError) as e:
        await engine.indexer.create(COLL)
    assert kind_of(e) == Kind.ALREADY_EXISTS

    async def messages():
        yield COLL, [Document("s1", "stream one", {})]
        yield "", [Document("s2", "stream two", {})]
        yield COLL, []

    w = await engine.indexer.upsert_stream(messages())
    assert (w.upserted, w.passages, w.requests) == (2, 2, 3)

    async def wrong():
        yield COLL, [Document("s3", "three", {})]
        yield "other", [Document("s4", "four", {})]

    with pytest.raises(TandemError) as e:
        await engine.indexer.upsert_stream(wrong())
    assert "message 2" in e.value.message
    assert (await engine.indexer.delete(COLL, ["s1", "s2", "s3"])) == 3


async def test_embed_gives_unit_vectors(engine):
    out = await engine.embedder.embed(["one", "two"])
    assert len(out.vectors) == 2 and out.dimension == 384
    assert all(abs(float((v * v).sum()) - 1.0) < 1e-4 for v in out.vectors)
    with pytest.raises(TandemError) as e:
        await engine.embedder.embed([])
    assert kind_of(e) == Kind.INVALID_ARGUMENT


async def test_info_reports_the_effective_limits(engine):
    i = engine.info()
    assert [m.name for m in i.models] == ["tiny", "tiny2", bundled_encoder()]
    assert i.default_reranker == "tiny" and i.storage == "milvus-lite" and i.limits.rerank_depth > 0
