"""Several models in one server: named rerankers and embedders, per-request and per-collection choice,
a rerank cascade in Search, the model label on worker metrics, and a causal-LM reranker.

Every server here is the real one over loopback gRPC with Milvus Lite in a temp dir; the models are saved to
disk by tests/support/checkpoints.py and loaded through the server's normal path."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch

from tandem.v1 import document_pb2, embed_pb2, index_pb2, info_pb2, rerank_pb2, search_pb2
from tests.support.checkpoints import bundled_encoder, tiny_causal_reranker
from tests.support.data import load_beir
from tests.support.stubs import Stubs
from tests.support.metricsparse import samples, value
from tests.support.serverproc import REPO, ServerProcess

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
FP32 = ("--backend", "torch", "--precision", "fp32")  # one option per model: nothing measured at start


@pytest.fixture(scope="module")
def causal(ckpt_dir) -> str:
    return tiny_causal_reranker(ckpt_dir / "causal-ce")


@pytest.fixture(scope="module")
def multi(make_module_server, tmp_path_factory, minilm_ce, tiny_ce, causal, small_emb):
    """Three rerankers (the first is the default) and two embedders, in torch fp32 so that scores can be
    compared with sentence-transformers' own fp32 `predict` and `encode` (one option: nothing measured). A reranker queue holds 64 pairs, so a stage
    over 100 candidates is refused at once: a deterministic overload."""
    d = tmp_path_factory.mktemp("multi")
    s = make_module_server("--reranker", f"mini={minilm_ce}", "--reranker", f"tiny={tiny_ce}",
                      "--reranker", f"causal={causal}", "--embedder", DEFAULT_EMBEDDER,
                      "--embedder", f"small={small_emb}", "--precision", "fp32", "--backend", "torch",
                      "--queue-capacity", "64", "--milvus-uri", str(d / "m.db"), dir=d)
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def ms(multi):
    with multi.channel() as ch:
        yield Stubs(ch)


@pytest.fixture(scope="module")
def texts():
    corpus, queries = load_beir("cranfield", limit=120)
    return [q["text"] for q in queries[:20]], [f"{d['title']} {d['text']}".strip() for d in corpus]


def _predict(path: str, pairs) -> np.ndarray:
    """Each pair scored alone by sentence-transformers, raw logits."""
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(path, device="cpu")
    return np.array([ce.predict([p], activation_fn=torch.nn.Identity())[0] for p in pairs])


def test_info_lists_every_model_with_its_memory(ms, minilm_ce):
    info = ms.info.Info(info_pb2.InfoRequest(), timeout=10)
    by_name = {m.name: m for m in info.models}
    assert set(by_name) == {"mini", "tiny", "causal", DEFAULT_EMBEDDER, "small"}
    assert (info.default_reranker, info.default_embedder) == ("mini", DEFAULT_EMBEDDER)
    assert {n: m.kind for n, m in by_name.items()} == {"mini": "reranker", "tiny": "reranker", "causal": "reranker",
                                                      DEFAULT_EMBEDDER: "embedder", "small": "embedder"}
    assert by_name["small"].dimension == 64 and by_name[DEFAULT_EMBEDDER].dimension == 384
    assert all(m.precision == "fp32" and m.device == "cpu" and m.max_seq_length > 0 and m.source for m in info.models)
    from sentence_transformers import CrossEncoder

    mini = CrossEncoder(minilm_ce, device="cpu")
    assert by_name["mini"].parameter_bytes == sum(t.numel() * t.element_size() for t in [*mini.parameters(), *mini.buffers()])
    assert by_name["mini"].parameter_bytes > 20 * by_name["tiny"].parameter_bytes > 0


def test_mixed_models_concurrently_each_equal_their_own_predict(ms, texts, minilm_ce, tiny_ce):
    queries, docs = texts
    calls = [("mini" if i % 2 else "tiny", queries[i % len(queries)], docs[i * 5:(i * 5) + 3 + i % 4])
             for i in range(16)]

    def one(call):
        model, q, ds = call
        r = ms.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=ds, model=model, raw_scores=True),
                             timeout=120)
        assert r.model == model
        return np.array([x.relevance_score for x in sorted(r.results, key=lambda x: x.index)])

    with ThreadPoolExecutor(16) as pool:
        served = list(pool.map(one, calls))
    for path, name in ((minilm_ce, "mini"), (tiny_ce, "tiny")):
        mine = [(c, s) for c, s in zip(calls, served) if c[0] == name]
        want = _predict(path, [(q, d) for (_, q, ds), _ in mine for d in ds])
        got = np.concatenate([s for _, s in mine])
        # fp32 both sides; batches pad differently from a pair alone, which moves float32 sums by ~1e-6.
        assert np.abs(got - want).max() < 1e-4, name
    # The two models really differ, so a mix-up between them could not pass.
    q, ds = calls[0][1], calls[0][2]
    assert np.abs(_predict(minilm_ce, [(q, d) for d in ds]) - _predict(tiny_ce, [(q, d) for d in ds])).max() > 1e-2


def test_causal_lm_reranker_equals_its_own_predict(ms, texts, causal):
    queries, docs = texts
    # Lengths from a word to a whole abstract in one request, so the batch needs left padding to be exact.
    ds = ["wing", docs[0], docs[1][:40], docs[2], "boundary layer"]
    r = ms.rerank.Rerank(rerank_pb2.RerankRequest(query=queries[0], documents=ds, model="causal", raw_scores=True),
                         timeout=120)
    got = np.array([x.relevance_score for x in sorted(r.results, key=lambda x: x.index)])
    want = _predict(causal, [(queries[0], d) for d in ds])
    assert np.abs(got - want).max() < 1e-4
    assert r.usage.pairs == len(ds) and r.usage.tokens > 0
    assert len(set(np.round(got, 3))) == len(ds)  # the scores are not all alike: ordering is tested


def test_unknown_model_names_are_not_found(ms):
    cases = [
        lambda: ms.rerank.Rerank(rerank_pb2.RerankRequest(query="q", documents=["d"], model="nope"), timeout=10),
        lambda: ms.embed.Embed(embed_pb2.EmbedRequest(texts=["t"], model="nope"), timeout=10),
        lambda: ms.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="x_nope", embedder="nope"),
                                          timeout=10),
        lambda: ms.search.Search(search_pb2.SearchRequest(collection="any", query="q", reranker="nope"), timeout=10),
        lambda: ms.search.Search(search_pb2.SearchRequest(
            collection="any", query="q", rerank_stages=[search_pb2.RerankStage(model="tiny", keep=20),
                                                        search_pb2.RerankStage(model="nope")]), timeout=10),
    ]
    for call in cases:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in e.value.details() and "loaded:" in e.value.details()


def test_embed_picks_a_model_by_name(ms, small_emb):
    from sentence_transformers import SentenceTransformer

    r = ms.embed.Embed(embed_pb2.EmbedRequest(texts=["shock waves"], model="small"), timeout=30)
    assert (r.model, r.dimension) == ("small", 64)
    want = SentenceTransformer(small_emb, device="cpu").encode(["shock waves"], normalize_embeddings=True)[0]
    assert np.abs(np.array(r.embeddings[0].values) - want).max() < 1e-5


def _docs(texts, n):
    return [document_pb2.Document(id=f"d{i}", text=t) for i, t in enumerate(texts[:n])]


def test_a_collection_searches_with_its_own_embedder(ms, texts, small_emb):
    from sentence_transformers import SentenceTransformer

    queries, docs = texts
    info = ms.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="by_small", embedder="small"),
                                     timeout=30).info
    assert (info.embedder, info.dimension) == ("small", 64)
    ms.index.Upsert(index_pb2.UpsertRequest(collection="by_small", documents=_docs(docs, 50)), timeout=60)
    r = ms.search.Search(search_pb2.SearchRequest(collection="by_small", query=queries[3], top_n=5, recall_k=5,
                                                  rerank=False), timeout=60)
    st = SentenceTransformer(small_emb, device="cpu")
    qv = st.encode([queries[3]], normalize_embeddings=True)[0]
    dv = st.encode(docs[:50], normalize_embeddings=True)
    exact = dv @ qv
    assert [h.id for h in r.hits] == [f"d{i}" for i in np.argsort(-exact)[:5]]
    assert abs(r.hits[0].recall_score - exact.max()) < 1e-4


def test_cascade_equals_the_same_stages_done_by_hand(ms, texts):
    queries, docs = texts
    ms.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="cascade"), timeout=30)
    ms.index.Upsert(index_pb2.UpsertRequest(collection="cascade", documents=_docs(docs, 120)), timeout=120)
    for q in queries[:4]:
        r = ms.search.Search(search_pb2.SearchRequest(
            collection="cascade", query=q, recall_k=60, top_n=5, rerank_depth=60, max_tokens_per_doc=512,
            rerank_stages=[search_pb2.RerankStage(model="tiny", keep=15), search_pb2.RerankStage(model="mini")]),
            timeout=120)
        assert r.reranked and not r.degraded_reason
        st = r.timings.rerank_stages
        assert [(s.model, s.scored, s.skipped) for s in st] == [("tiny", 60, False), ("mini", 15, False)]
        assert all(s.seconds > 0 for s in st) and r.timings.rerank_seconds >= sum(s.seconds for s in st) * 0.99

        # By hand: recall, then Rerank with each model over the previous stage's survivors.
        recall = ms.search.Search(search_pb2.SearchRequest(collection="cascade", query=q, recall_k=60, top_n=60,
                                                           rerank=False), timeout=60).hits
        first = ms.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=[h.text for h in recall], model="tiny"),
                                 timeout=60).results
        kept = [recall[x.index] for x in first[:15]]
        second = ms.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=[h.text for h in kept], model="mini",
                                                           top_n=5), timeout=60).results
        assert [h.id for h in r.hits] == [kept[x.index].id for x in second]
        assert np.allclose([h.score for h in r.hits], [x.relevance_score for x in second], atol=1e-5)


def test_an_overloaded_stage_is_skipped_and_named(ms, texts):
    q = texts[0][5]
    stages = [search_pb2.RerankStage(model="tiny", keep=20), search_pb2.RerankStage(model="mini")]
    r = ms.search.Search(search_pb2.SearchRequest(collection="cascade", query=q, recall_k=100, top_n=5,
                                                  rerank_depth=100, max_tokens_per_doc=512, rerank_stages=stages),
                         timeout=120)
    assert r.reranked and "rerank stage 1 (tiny) skipped because the reranker is overloaded" in r.degraded_reason
    st = r.timings.rerank_stages
    assert [(s.model, s.scored, s.skipped) for s in st] == [("tiny", 0, True), ("mini", 20, False)]
    # The skipped stage kept recall's best 20, in recall order; the second stage ranked those.
    recall = ms.search.Search(search_pb2.SearchRequest(collection="cascade", query=q, recall_k=20, top_n=20,
                                                       rerank=False), timeout=60).hits
    by_hand = ms.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=[h.text for h in recall], model="mini",
                                                        top_n=5), timeout=60).results
    assert [h.id for h in r.hits] == [recall[x.index].id for x in by_hand]
    with pytest.raises(grpc.RpcError) as e:
        ms.search.Search(search_pb2.SearchRequest(collection="cascade", query=q, recall_k=100, top_n=5,
                                                  rerank_depth=100, rerank_stages=stages, require_rerank=True),
                         timeout=120)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_cascade_requests_are_checked(ms):
    bad = [
        (dict(reranker="tiny", rerank_stages=[search_pb2.RerankStage(model="mini")]), "not both"),
        (dict(rerank=False, rerank_stages=[search_pb2.RerankStage(model="mini")]), "rerank is false"),
        (dict(top_n=10, rerank_stages=[search_pb2.RerankStage(model="tiny", keep=5)]), "below top_n"),
        (dict(rerank_stages=[search_pb2.RerankStage(model="tiny")] * 5), "at most 4"),
    ]
    for kw, words in bad:
        with pytest.raises(grpc.RpcError) as e:
            ms.search.Search(search_pb2.SearchRequest(collection="cascade", query="q", **kw), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in e.value.details(), kw


def test_worker_metrics_carry_the_model_label(multi, ms):
    ms.rerank.Rerank(rerank_pb2.RerankRequest(query="q", documents=["a", "b"], model="tiny"), timeout=30)
    text = multi.metrics_text()
    models = {labels["model"] for labels, _ in samples(text, "tandem_batch_size_count")}
    assert models <= {"mini", "tiny", "causal", DEFAULT_EMBEDDER, "small", ""}  # a closed set: the loaded names
    assert value(text, "tandem_batch_size_count", worker="reranker", model="tiny") > 0
    assert value(text, "tandem_queue_capacity", worker="reranker", model="causal") > 0
    assert value(text, "tandem_batch_size_count", worker="recall", model="") > 0


def test_collection_whose_embedder_is_not_loaded_fails_precondition(make_server, tmp_path, small_emb):
    db = str(tmp_path / "m.db")
    a = make_server("--reranker", "none", "--embedder", DEFAULT_EMBEDDER, *FP32,
                    "--embedder", f"small={small_emb}", "--milvus-uri", db, "--warmup", "false", dir=tmp_path / "a")
    try:
        with a.channel() as ch:
            s = Stubs(ch)
            s.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="c", embedder="small"), timeout=30)
            s.index.Upsert(index_pb2.UpsertRequest(collection="c", documents=[document_pb2.Document(id="1", text="x")]),
                           timeout=30)
    finally:
        a.terminate()
    # Without `small`; then with `small` pointing to a 384-dimensional model.
    for extra, words in (([], ["'small'", "--embedder small="]),
                         (["--embedder", f"small={bundled_encoder()}"], ["64-dimensional", "384-dimensional"])):
        b = make_server("--reranker", "none", "--embedder", DEFAULT_EMBEDDER, *FP32, *extra,
                          "--milvus-uri", db, "--warmup", "false", dir=tmp_path / "b")
        try:
            with b.channel() as ch:
                s = Stubs(ch)
                for call in (lambda: s.search.Search(search_pb2.SearchRequest(collection="c", query="x"), timeout=30),
                             lambda: s.index.Upsert(index_pb2.UpsertRequest(
                                 collection="c", documents=[document_pb2.Document(id="2", text="y")]), timeout=30)):
                    with pytest.raises(grpc.RpcError) as e:
                        call()
                    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert all(w in e.value.details() for w in words), e.value.details()
                # The collection itself is intact: it still holds the one document written with `small`.
                info = s.index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection="c"), timeout=30).info
                assert (info.row_count, info.embedder, info.dimension) == (1, "small", 64)
        finally:
            b.terminate()


@pytest.mark.parametrize("args, words", [
    (["--reranker", "a=x", "--reranker", "a=y"], "'a' is given more than once"),
    (["--reranker", "none", "--reranker", "b=y"], "cannot be combined"),
    (["--embedder", "e="], "nothing after '='"),
])
def test_bad_model_flags_fail_at_start(tmp_path, args, words):
    r = subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", *args, "--milvus-uri", str(tmp_path / "m.db")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and words in r.stderr, r.stderr[-2000:]


def test_a_model_too_large_for_free_memory_is_refused_before_loading():
    from tandem.server.models import ModelTooLarge, check_fits, weights_bytes

    check_fits("reranker", "m", 2**30, "cpu", available=2**31)  # fits: no error
    with pytest.raises(ModelTooLarge) as e:
        check_fits("reranker", "big", 3 * 2**30, "cuda:0", available=2**30)
    assert "3.00 GiB" in str(e.value) and "1.00 GiB" in str(e.value) and "--precision" in str(e.value)
    fp32 = weights_bytes(bundled_encoder(), "fp32")
    assert fp32 > 80 * 2**20 and weights_bytes(bundled_encoder(), "bf16") == fp32 // 2
