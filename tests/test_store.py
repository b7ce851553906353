"""The embedded store: filter semantics without `not`, BM25 analyzers, background sealing, and the
supervised engine child. Real server, real milvus-lite in a temp dir."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import document_pb2, filter_pb2, index_pb2, index_pb2_grpc, search_pb2, search_pb2_grpc
from tests.support.metricsparse import value
from tests.support.serverproc import ServerProcess
from tests.support.messages import cond

Op = filter_pb2.Operator
M = search_pb2.SearchMode

# Every document shares the word "wing", so BM25 recalls all of them and only the filter decides.
DOCS = {
    "a": {"n": 1, "tag": "x", "flag": True},
    "b": {"n": 100, "tag": "y"},
    "c": {"n": "str"},
    "d": {},
    "e": {"n": None, "nested": {"k": 2}},
}
ALL = set(DOCS)


def _struct(d):
    s = struct_pb2.Struct()
    s.update(d)
    return s


@pytest.fixture(scope="module")
def sem(stubs):
    stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="sem"), timeout=30)
    stubs.index.Upsert(index_pb2.UpsertRequest(collection="sem", documents=[
        document_pb2.Document(id=k, text=f"wing report {k}", metadata=_struct(v)) for k, v in DOCS.items()]),
        timeout=60)
    return "sem"


F = filter_pb2.Filter
CASES = [
    (F(all=[cond("n", Op.OPERATOR_EQ, 1)]), {"a"}),
    (F(all=[cond("n", Op.OPERATOR_NE, 1)]), ALL - {"a"}),  # absent, null and other types differ from 1
    (F(all=[cond("n", Op.OPERATOR_LT, 50)]), {"a"}),
    (F(all=[cond("n", Op.OPERATOR_GTE, 50)]), {"b"}),
    (F(none=[cond("n", Op.OPERATOR_LT, 50)]), ALL - {"a"}),
    (F(none=[cond("n", Op.OPERATOR_GTE, 50)]), ALL - {"b"}),
    (F(none=[cond("n", Op.OPERATOR_GT, 1), cond("n", Op.OPERATOR_LTE, 0)]), ALL - {"b"}),
    (F(all=[cond("n", Op.OPERATOR_IN, [1, "str"])]), {"a", "c"}),
    (F(all=[cond("n", Op.OPERATOR_NOT_IN, [1, "str"])]), {"b", "d", "e"}),
    (F(none=[cond("n", Op.OPERATOR_IN, [1, 100])]), {"c", "d", "e"}),
    (F(none=[cond("n", Op.OPERATOR_NOT_IN, [1])]), {"a"}),
    (F(all=[cond("n", Op.OPERATOR_EXISTS)]), {"a", "b", "c"}),  # null is not "present"
    (F(none=[cond("n", Op.OPERATOR_EXISTS)]), {"d", "e"}),
    (F(all=[cond("nested.k", Op.OPERATOR_EXISTS)]), {"e"}),
    (F(all=[cond("nested", Op.OPERATOR_EXISTS)]), {"e"}),
    (F(all=[cond("nested.k", Op.OPERATOR_EQ, 2)]), {"e"}),
    (F(all=[cond("flag", Op.OPERATOR_EQ, True)]), {"a"}),
    (F(none=[cond("flag", Op.OPERATOR_EQ, True)]), ALL - {"a"}),
    (F(none=[cond("tag", Op.OPERATOR_NE, "x")]), {"a"}),
    (F(any=[cond("n", Op.OPERATOR_EQ, 1), cond("tag", Op.OPERATOR_EQ, "y")]), {"a", "b"}),
    (F(none=[cond("n", Op.OPERATOR_EQ, 1), cond("tag", Op.OPERATOR_EQ, "y")]), {"c", "d", "e"}),
    (F(all=[cond("n", Op.OPERATOR_EXISTS)], none=[cond("n", Op.OPERATOR_EQ, "str")]), {"a", "b"}),
]


@pytest.mark.parametrize("mode", [M.SEARCH_MODE_DENSE, M.SEARCH_MODE_SPARSE, M.SEARCH_MODE_HYBRID])
@pytest.mark.parametrize("f, expected", CASES)
def test_filter_semantics(stubs, sem, mode, f, expected):
    r = stubs.search.Search(search_pb2.SearchRequest(collection=sem, query="wing", mode=mode, recall_k=20, top_n=20,
                                                     rerank=False, filter=f), timeout=30)
    assert {h.id for h in r.hits} == expected


def test_bm25_analyzer_per_collection(stubs):
    docs = [document_pb2.Document(id="1", text="The flows were running over the plates"),
            document_pb2.Document(id="2", text="Cylinder wakes")]
    for coll, lang in (("lang_en", ""), ("lang_std", "standard")):
        info = stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection=coll, language=lang),
                                            timeout=30).info
        assert info.language == (lang or "english")
        stubs.index.Upsert(index_pb2.UpsertRequest(collection=coll, documents=docs), timeout=60)

    def sparse(coll, q):
        r = stubs.search.Search(search_pb2.SearchRequest(collection=coll, query=q, mode=M.SEARCH_MODE_SPARSE,
                                                         recall_k=5, top_n=5, rerank=False), timeout=30)
        return [h.id for h in r.hits]

    assert sparse("lang_en", "flow run plate") == ["1"]  # stemmed: flows/running/plates match
    assert sparse("lang_std", "flow run plate") == []
    assert sparse("lang_en", "the") == []  # a stop word only: nothing to match
    assert sparse("lang_std", "the") == ["1"]
    d = stubs.index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection="lang_std"), timeout=30).info
    assert d.language == "standard"
    with pytest.raises(grpc.RpcError) as e:
        stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="lang_x", language="klingon"),
                                     timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "english" in e.value.details()


def test_writes_are_sealed_in_the_background(server, stubs):
    stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="sealed"), timeout=30)
    before = value(server.metrics_text(), "tandem_store_flush_seconds_count")
    stubs.index.Upsert(index_pb2.UpsertRequest(collection="sealed", documents=[
        document_pb2.Document(id=str(i), text=f"sealed doc {i}") for i in range(20)]), timeout=60)
    end = time.monotonic() + 15
    while time.monotonic() < end and value(server.metrics_text(), "tandem_store_flush_seconds_count") == before:
        time.sleep(0.2)
    text = server.metrics_text()
    assert value(text, "tandem_store_flush_seconds_count") > before
    assert value(text, "tandem_store_unsealed_rows") == 0


def _children(pid: int, comm: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1: stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if int(rest[1]) == pid and name == comm:
                out.append(int(d.name))
    return out


def _nice(pid: int) -> int:
    """The highest niceness among the process's threads (they are reniced one by one)."""
    return max(int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in Path(f"/proc/{pid}/task").iterdir())


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]) != "Z"
    except OSError:
        return False


def _wait(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_engine_child_is_supervised(make_server, tmp_path, tiny_ce):
    """The embedded engine runs as a child: killed, it is restarted and loses nothing acknowledged; and it
    does not outlive a Tandem that is killed."""
    args = ("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "sup.db"), "--warmup", "false")
    s = make_server(*args, dir=tmp_path)
    try:
        (child,) = _children(s.proc.pid, "milvus")
        assert _nice(child) == _nice(s.proc.pid) + 10  # model work runs first on a saturated CPU
        with s.channel() as ch:
            index, search = index_pb2_grpc.IndexServiceStub(ch), search_pb2_grpc.SearchServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            index.CreateCollection(index_pb2.CreateCollectionRequest(collection="c"), timeout=30)
            index.Upsert(index_pb2.UpsertRequest(collection="c", documents=[
                document_pb2.Document(id=str(i), text=f"boundary layer note {i}") for i in range(10)]), timeout=60)
            os.kill(child, signal.SIGKILL)
            assert _wait(lambda: not _alive(child), 10)

            def searchable():
                try:
                    r = search.Search(search_pb2.SearchRequest(collection="c", query="boundary layer", top_n=10,
                                                               rerank=False), timeout=10)
                    return len(r.hits) == 10
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, e  # while it restarts, and only then
                    return False

            assert _wait(searchable, 60)
            status = health.Check(health_pb2.HealthCheckRequest(service="tandem.v1.SearchService"), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert value(s.metrics_text(), "tandem_store_engine_restarts_total") == 1
            (child2,) = _children(s.proc.pid, "milvus")
            assert child2 != child and _nice(child2) == _nice(s.proc.pid) + 10
        s.kill()
        assert _wait(lambda: not _alive(child2), 15), "the engine outlived the Tandem process that started it"
    finally:
        s.kill()


def test_engine_child_is_restarted_to_give_back_memory_under_load(make_server, tmp_path, tiny_ce):
    """milvus-lite keeps deleted and replaced rows in memory and cannot compact; past --engine-recycle-mb of growth
    the child is restarted on purpose. With a bound of 1 MB it restarts again and again under a write and search
    load with exports: no call fails (they wait while it restarts; an open export puts it off), and every
    acknowledged write is there afterwards."""
    s = make_server("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "rec.db"), "--warmup", "false",
                    "--engine-recycle-mb", "1", "--engine-recycle-check-seconds", "0.5", dir=tmp_path)
    (first,) = _children(s.proc.pid, "milvus")
    failures, acked, stop = [], [], threading.Event()
    with s.channel() as ch:
        index, search = index_pb2_grpc.IndexServiceStub(ch), search_pb2_grpc.SearchServiceStub(ch)
        index.CreateCollection(index_pb2.CreateCollectionRequest(collection="c"), timeout=30)

        def load():
            n = 0
            while not stop.is_set():
                try:
                    index.Upsert(index_pb2.UpsertRequest(collection="c", documents=[document_pb2.Document(
                        id=f"d{n}", text=f"boundary layer note {n}")]), timeout=60)
                    acked.append(f"d{n}")
                    if n % 3 == 2:  # some are deleted: what milvus-lite keeps in memory
                        index.Delete(index_pb2.DeleteRequest(collection="c", ids=[f"d{n - 1}"]), timeout=60)
                        acked.remove(f"d{n - 1}")
                    search.Search(search_pb2.SearchRequest(collection="c", query="boundary layer", top_n=3,
                                                           rerank=False), timeout=60)
                    if n % 20 == 0:  # an export holds the engine's iterator: no restart while it is open
                        for _ in index.Export(index_pb2.ExportRequest(collection="c", page_size=4), timeout=60):
                            pass
                except grpc.RpcError as e:
                    failures.append(f"{e.code().name}: {e.details()}")
                n += 1

        t = threading.Thread(target=load)
        t.start()
        try:
            assert _wait(lambda: value(s.metrics_text(), "tandem_store_engine_recycles_total") >= 3 or failures,
                         180), "the engine child was not restarted"
        finally:
            stop.set()
            t.join(120)
        assert not failures, failures[:5]
        (now,) = _children(s.proc.pid, "milvus")
        assert now != first and _nice(now) == _nice(s.proc.pid) + 10
        assert value(s.metrics_text(), "tandem_store_engine_restarts_total") == 0  # none died
        assert "restarted it to give back memory" in s.log()
        kept = set()
        for page in index.Export(index_pb2.ExportRequest(collection="c"), timeout=60):
            kept |= {r.id for r in page.rows}
        assert kept == set(acked)


def test_dense_recall_equals_exact_search(stubs):
    """The engine's index (AUTOINDEX on the embedded engine) loses nothing against exact cosine search:
    served top-10 ids equal exact top-10 ids over the same embedder's vectors."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from tests.support.checkpoints import bundled_encoder
    from tests.support.data import load_beir

    corpus, queries = load_beir("cisi", limit=400)
    docs = [document_pb2.Document(id=d["_id"], text=f"{d['title']} {d['text']}".strip()) for d in corpus]
    stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="ann"), timeout=30)
    stubs.index.UpsertStream((index_pb2.UpsertStreamRequest(collection="ann", documents=docs[i:i + 64])
                              for i in range(0, len(docs), 64)), timeout=600)
    model = SentenceTransformer(bundled_encoder(), device="cpu")
    d = model.encode([x.text for x in docs], batch_size=32, normalize_embeddings=True)
    qs = [q["text"] for q in queries[:40]]
    exact = np.argsort(-(model.encode(qs, normalize_embeddings=True) @ d.T), axis=1)[:, :10]
    agree = 0
    for q, top in zip(qs, exact):
        r = stubs.search.Search(search_pb2.SearchRequest(collection="ann", query=q, top_n=10, recall_k=10,
                                                         rerank=False), timeout=30)
        agree += len({h.id for h in r.hits} & {docs[i].id for i in top})
    assert agree / (10 * len(qs)) >= 0.99


def test_awkward_ids_replace_search_and_delete(stubs):
    """Ids with quotes, backslashes, percent signs and control characters behave like any other id."""
    ids = ["O'Brien", 'say "hi"', "back\\slash", "tab\there", "cr\r", "100%", "%41", "é\u2028x"]
    stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection="awkward"), timeout=30)
    for version in (1, 2):  # the second Upsert replaces
        stubs.index.Upsert(index_pb2.UpsertRequest(collection="awkward", documents=[
            document_pb2.Document(id=i, text=f"turbine blade {n} version {version}") for n, i in enumerate(ids)]),
            timeout=60)
    info = stubs.index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection="awkward"), timeout=30).info
    assert info.row_count == len(ids)
    r = stubs.search.Search(search_pb2.SearchRequest(collection="awkward", query="turbine blade", top_n=20,
                                                     recall_k=20, rerank=False), timeout=30)
    assert sorted(h.id for h in r.hits) == sorted(ids) and all("version 2" in h.text for h in r.hits)
    stubs.index.Delete(index_pb2.DeleteRequest(collection="awkward", ids=ids[:5]), timeout=30)
    r = stubs.search.Search(search_pb2.SearchRequest(collection="awkward", query="turbine blade", top_n=20,
                                                     recall_k=20, rerank=False), timeout=30)
    assert sorted(h.id for h in r.hits) == sorted(ids[5:])


def test_hybrid_fusion_equals_milvus_rrf(tmp_path):
    """Tandem fuses dense and BM25 itself (faster on the embedded engine); the result is Milvus's own RRF."""
    import numpy as np
    from pymilvus import AnnSearchRequest, RRFRanker

    from tandem.server.storage import RRF_K, Store
    from tests.support.data import load_beir

    corpus, queries = load_beir("cranfield", limit=300)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((len(corpus), 8)).astype(np.float32)
    st = Store(str(tmp_path / "h.db"))
    try:
        st.create("h", "e", 8)
        st.upsert("h", [{"id": d["_id"], "text": f"{d['title']} {d['text']}".strip() or "empty", "metadata": {},
                         "dense": vecs[i].tolist()} for i, d in enumerate(corpus)])
        st.flush("h")
        for i, q in enumerate(queries[:10]):
            v = rng.standard_normal(8).astype(np.float32).tolist()
            ours = st.search("h", "hybrid", [v], [q["text"]], 20, "")[0]
            theirs = st.conn.client().hybrid_search("h", [
                AnnSearchRequest([v], "dense", {"metric_type": "COSINE", "params": {}}, 20),
                AnnSearchRequest([q["text"]], "sparse", {"metric_type": "BM25"}, 20)], RRFRanker(RRF_K), limit=20)[0]
            ref = {str(h["id"]): float(h["distance"]) for h in theirs}
            assert [round(h.score, 6) for h in ours] == sorted((round(x, 6) for x in ref.values()), reverse=True)
            assert all(abs(ref[h.id] - h.score) < 1e-6 for h in ours if h.id in ref)  # ties may cut differently
            assert ours[0].id in ref and ours[0].text
    finally:
        st.close()


@pytest.fixture(scope="module")
def sem_store(tmp_path_factory):
    from tandem.server.storage import Store

    st = Store(str(tmp_path_factory.mktemp("sem-store") / "s.db"))
    st.create("s", "e", 4)
    st.upsert("s", [{"id": k, "text": f"wing report {k}", "metadata": v, "dense": [1.0, 0.5, i, 0.1]}
                    for i, (k, v) in enumerate(DOCS.items())])
    yield st
    st.close()


@pytest.mark.parametrize("path", ["engine", "post"])
@pytest.mark.parametrize("f, expected", CASES)
def test_filter_semantics_of_both_paths(sem_store, path, f, expected):
    """The engine's expression and Tandem's predicate agree on every case, document by document."""
    from tandem.server.storage.filters import compile_filter, compile_predicate

    predicate = compile_predicate(f)
    assert predicate is not None and {k for k, m in DOCS.items() if predicate(m)} == expected
    expr = compile_filter(f)
    for mode in ("dense", "sparse", "hybrid"):
        got = sem_store.search("s", mode, [[1.0, 0.5, 0.2, 0.1]], ["wing"], 20, expr,
                               predicate if path == "post" else None)[0]
        assert {h.id for h in got} == expected


def test_post_filter_equals_engine_filter_and_falls_back(tmp_path):
    import numpy as np

    from tandem.server import metrics
    from tandem.server.storage.filters import compile_filter, compile_predicate
    from tandem.server.storage import Store
    from tests.support.data import load_beir

    corpus, queries = load_beir("cranfield", limit=300)
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((len(corpus), 8)).astype(np.float32)
    st = Store(str(tmp_path / "p.db"))
    counter = lambda path: metrics.RECALL_FILTER.labels(path)._value.get()  # noqa: E731
    try:
        st.create("p", "e", 8)
        st.upsert("p", [{"id": d["_id"], "text": f"{d['title']} {d['text']}".strip() or "empty",
                         "metadata": {"n": i, "parity": i % 2}, "dense": vecs[i].tolist()}
                        for i, d in enumerate(corpus)])
        st.flush("p")
        broad = F(all=[cond("n", Op.OPERATOR_GTE, 30)], none=[cond("parity", Op.OPERATOR_EQ, 1)])
        narrow = F(all=[cond("n", Op.OPERATOR_GTE, 295)])  # 5 survivors: fewer than asked for
        for f, path in ((broad, "post"), (narrow, "engine")):
            expr, predicate = compile_filter(f), compile_predicate(f)
            for mode in ("dense", "sparse", "hybrid"):
                vs = [rng.standard_normal(8).astype(np.float32).tolist() for _ in range(3)]
                ts = [q["text"] for q in queries[:3]]
                before = counter(path)
                fast = st.search("p", mode, vs, ts, 10, expr, predicate)
                assert counter(path) == before + 3
                exact = st.search("p", mode, vs, ts, 10, expr)
                assert [[h.id for h in row] for row in fast] == [[h.id for h in row] for row in exact], (mode, path)
                assert all(row for row in fast)
    finally:
        st.close()
