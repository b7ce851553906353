"""Export, import, backup and restore: between the embedded engine and a Milvus server (milvus-lite serving TCP),
through the `tandem` command and the RPCs, with kills part-way and bad files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tandem import Client
from tandem.errors import TandemError
from tandem.transfer import arrow_schema
from tandem.v1 import index_pb2, index_pb2_grpc
from tests.support.data import load_beir
from tests.support.metricsparse import value
from tests.support.disk import small_disk
from tests.support.milvus import MilvusLite, wait_for
from tests.support.serverproc import REPO, free_port

CHUNKING = (48, 8)
QUERIES = 6


@pytest.fixture(scope="module")
def cranfield():
    corpus, queries = load_beir("cranfield", limit=200)
    docs = [{"id": d["_id"], "text": f"{d['title']} {d['text']}".strip(),
             "metadata": {"title": d["title"], "n": i, "even": i % 2 == 0, "tags": ["a", "b"][: i % 3]}}
            for i, d in enumerate(corpus) if d["text"].strip()]
    return docs, [q["text"] for q in queries[:QUERIES]]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def source(make_module_server, tiny_ce, cranfield):
    """An embedded server with a plain and a chunked Cranfield collection."""
    s = make_module_server("--reranker", tiny_ce)
    docs, _ = cranfield
    with Client(s.target) as c:
        c.create_collection("plain")
        c.create_collection("chunked", chunk_tokens=CHUNKING[0], chunk_overlap=CHUNKING[1])
        c.upsert("plain", docs, batch_size=64)
        c.upsert("chunked", docs, batch_size=64)
    return s


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    m = MilvusLite(tmp_path_factory.mktemp("milvus-server"), free_port()).start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def target(make_module_server, tiny_ce, milvus):
    """A server whose store is a Milvus server reached over http://."""
    return make_module_server("--reranker", tiny_ce, "--milvus-uri", milvus.uri, "--warmup", "false")


def tandem(*args, cache, timeout=300, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "tandem.cli", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory, cache):
    d = tmp_path_factory.mktemp("exports")
    for name in ("plain", "chunked"):
        tandem("export", name, "-o", str(d / f"{name}.parquet"), "--target", source.target, cache=cache)
    return d


def embedder_batches(server) -> float:
    return value(server.metrics_text(), "tandem_batch_size_count", worker="embedder")


def rows_of(path) -> dict:
    """{(id, chunk): (text, metadata, vector bytes, of, start)} of an export file."""
    t = pq.read_table(path).to_pylist()
    return {(r["id"], r.get("chunk", 0)): (r["text"], json.loads(r["metadata"]),
                                           np.asarray(r["dense"], "<f4").tobytes(), r.get("of", 0), r.get("start", 0))
            for r in t}


def hits(client, collection, queries, mode, **kw):
    """Each query's recall list as runs of equal score: [(score, {(id, text, metadata, passage, offset)})].
    Rows of equal score come back in the engine's physical order, which an import does not keep (equal-length
    passages tie often under BM25), so the order within a run is not compared. The last run, which the limit
    may cut, is compared by score only."""
    out = []
    for q in queries:
        res = client.search(collection, q, top_n=30, recall_k=30, mode=mode, rerank=False, **kw)
        runs: list = []
        for h in res:
            key = (h.id, h.text, json.dumps(h.metadata, sort_keys=True), h.passage, h.passage_offset)
            if runs and runs[-1][0] == round(h.recall_score, 6):
                runs[-1][1].add(key)
            else:
                runs.append((round(h.recall_score, 6), {key}))
        out.append([*runs[:-1], (runs[-1][0], None)] if runs else [])
    return out


# -- the file ------------------------------------------------------------------------------------------------

def test_an_export_is_a_parquet_file_any_reader_opens(exported, source, cranfield):
    docs, _ = cranfield
    with Client(source.target) as c:
        plain, chunked = c.describe("plain"), c.describe("chunked")
    t = pq.read_table(exported / "plain.parquet")
    record = json.loads(t.schema.metadata[b"tandem"])
    assert record["format"] == "tandem-export" and record["format_version"] == 1
    assert (record["collection"], record["embedder"], record["dimension"]) == ("plain", plain.embedder, 384)
    assert record["language"] == "english" and record["chunking"] is None
    assert t.num_rows == plain.row_count == len(docs)
    assert t.schema.field("dense").type == pa.list_(pa.float32(), 384)
    by_id = {r["id"]: r for r in t.to_pylist()}
    assert {d["id"] for d in docs} == set(by_id)
    d = docs[7]
    assert by_id[d["id"]]["text"] == d["text"] and json.loads(by_id[d["id"]]["metadata"]) == d["metadata"]
    # The stored vector is the embedder's vector of the text.
    with Client(source.target) as c:
        want = np.asarray(c.embed([d["text"]])[0], "f4")
    got = np.asarray(by_id[d["id"]]["dense"], "f4")
    assert float(got @ want) / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.999

    ct = pq.read_table(exported / "chunked.parquet")
    crecord = json.loads(ct.schema.metadata[b"tandem"])
    assert crecord["chunking"] == list(CHUNKING) and crecord["documents"] == len(docs)
    assert ct.num_rows == chunked.passages > len(docs)
    rows = [r for r in ct.to_pylist() if r["id"] == d["id"]]
    assert sorted(r["chunk"] for r in rows) == list(range(rows[0]["of"])) and rows[0]["of"] > 1


# -- both directions ---------------------------------------------------------------------------------------------

def test_import_into_a_milvus_server_answers_every_search_like_the_source(exported, source, target, cranfield, cache):
    _, queries = cranfield
    before = embedder_batches(target)
    for name in ("plain", "chunked"):
        p = tandem("import", str(exported / f"{name}.parquet"), "--target", target.target, cache=cache)
        assert "no embedding" in p.stdout
    assert embedder_batches(target) == before  # not one embedder batch: the vectors came from the file

    with Client(source.target) as src, Client(target.target) as dst:
        for name in ("plain", "chunked"):
            a, b = src.describe(name), dst.describe(name)
            assert (b.documents, b.passages, b.embedder, b.dimension, b.language) == \
                   (a.documents, a.passages, a.embedder, a.dimension, a.language)
            assert (b.chunking.max_tokens, b.chunking.overlap_tokens) == \
                   (a.chunking.max_tokens, a.chunking.overlap_tokens)
            for mode in ("dense", "sparse") if name == "chunked" else ("dense", "sparse", "hybrid"):
                assert hits(dst, name, queries, mode) == hits(src, name, queries, mode), (name, mode)
            if name == "chunked":
                # Hybrid fuses the two lists by rank, so a BM25 tie broken the other way moves fused scores a
                # little (1/61 - 1/62 per place): the same documents lead, in nearly the same order.
                for q in queries:
                    a = [h.id for h in src.search(name, q, top_n=10, mode="hybrid", rerank=False)]
                    b = [h.id for h in dst.search(name, q, top_n=10, mode="hybrid", rerank=False)]
                    assert len(set(a) & set(b)) >= 8 and a[:3] == b[:3], (q, a, b)
            # And with the reranker: the same candidates scored by the same model.
            for q in queries[:2]:
                ra, rb = src.search(name, q, top_n=5, mode="hybrid"), dst.search(name, q, top_n=5, mode="hybrid")
                assert [h.score for h in rb] == pytest.approx([h.score for h in ra], abs=1e-5)


def test_a_milvus_server_exports_back_to_the_embedded_engine_bit_for_bit(exported, source, target, tmp_path, cache):
    with Client(target.target) as c:
        if "chunked" not in c.collections():  # this module's tests run in order; alone, fill the target first
            for name in ("plain", "chunked"):
                tandem("import", str(exported / f"{name}.parquet"), "--target", target.target, cache=cache)
    for name in ("plain", "chunked"):
        back = tmp_path / f"{name}-back.parquet"
        tandem("export", name, "-o", str(back), "--target", target.target, cache=cache)
        assert rows_of(back) == rows_of(exported / f"{name}.parquet")
        tandem("import", str(back), "--collection", f"{name}_back", "--target", source.target, cache=cache)
        again = tmp_path / f"{name}-again.parquet"
        tandem("export", f"{name}_back", "-o", str(again), "--target", source.target, cache=cache)
        assert rows_of(again) == rows_of(exported / f"{name}.parquet")


def test_embedded_to_embedded_changes_the_analyzer_without_embedding_and_rechunks_only_by_re_embedding(
        exported, source, cranfield, cache):
    docs, queries = cranfield
    before = embedder_batches(source)
    tandem("import", str(exported / "plain.parquet"), "--collection", "plain_standard", "--language", "standard",
           "--target", source.target, cache=cache)
    assert embedder_batches(source) == before
    with Client(source.target) as c:
        assert c.describe("plain_standard").language == "standard"
        assert hits(c, "plain_standard", queries, "dense") == hits(c, "plain", queries, "dense")

    p = tandem("import", str(exported / "plain.parquet"), "--collection", "plain_chunked", "--chunk-tokens", "32",
               "--chunk-overlap", "4", "--target", source.target, cache=cache, check=False)
    assert p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and "--re-embed" in p.stderr
    tandem("import", str(exported / "chunked.parquet"), "--collection", "rechunked", "--chunk-tokens", "32",
           "--chunk-overlap", "4", "--re-embed", "--target", source.target, cache=cache)
    assert embedder_batches(source) > before
    with Client(source.target) as c:
        info = c.describe("rechunked")
        assert info.documents == len(docs) and info.chunking.max_tokens == 32
        assert info.passages > c.describe("chunked").passages
        # The documents were joined from their passages again, whole.
        res = c.search("rechunked", docs[3]["text"][:200], top_n=20, mode="sparse", rerank=False)
        assert {h.id: h.text for h in res}[docs[3]["id"]] == docs[3]["text"]


# -- bad input ---------------------------------------------------------------------------------------------------

def _write(path, table, record):
    meta = {b"tandem": json.dumps(record).encode()} if record is not None else None
    pq.write_table(table.replace_schema_metadata(meta), path)


def test_bad_files_and_conflicts_fail_with_a_reason(exported, source, tmp_path, cache):
    plain = exported / "plain.parquet"
    t = pq.read_table(plain)
    record = json.loads(t.schema.metadata[b"tandem"])

    def run(path, *extra):
        return tandem("import", str(path), "--collection", "bad", *extra, "--target", source.target, cache=cache,
                      check=False)

    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    p = run(truncated)
    assert p.returncode == 2 and "not a complete Parquet file" in p.stderr

    text = tmp_path / "notes.parquet"
    text.write_text("id,text\n1,hello\n")
    assert "not a complete Parquet file" in run(text).stderr

    foreign = tmp_path / "foreign.parquet"
    _write(foreign, t, None)
    p = run(foreign)
    assert p.returncode == 2 and "not a Tandem export" in p.stderr

    future = tmp_path / "future.parquet"
    _write(future, t, {**record, "format_version": 2})
    p = run(future)
    assert p.returncode == 2 and "format version 2" in p.stderr

    # Vectors of another dimension under the server's embedder name: another model.
    small = tmp_path / "small.parquet"
    rows = t.slice(0, 5).to_pylist()
    schema = arrow_schema(64, False, {**record, "dimension": 64})
    table = pa.Table.from_pylist([{**r, "dense": r["dense"][:64]} for r in rows], schema=schema)
    pq.write_table(table, small)
    p = run(small)
    assert p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and "64-dimensional" in p.stderr
    assert record["embedder"] in p.stderr and "--re-embed" in p.stderr

    unknown = tmp_path / "unknown.parquet"
    _write(unknown, t.slice(0, 5), {**record, "embedder": "e5-large-v9"})
    p = run(unknown)
    assert p.returncode == 1 and "FAILED_PRECONDITION" in p.stderr and "'e5-large-v9'" in p.stderr

    for _ in range(2):  # and a second run is not taken for a resumed one: it still refuses
        p = tandem("import", str(plain), "--target", source.target, cache=cache, check=False)
        assert p.returncode == 1 and "ALREADY_EXISTS" in p.stderr and "--into-existing" in p.stderr
    before = embedder_batches(source)
    tandem("import", str(plain), "--into-existing", "--target", source.target, cache=cache)  # idempotent
    assert embedder_batches(source) == before
    with Client(source.target) as c:
        assert c.describe("plain").row_count == t.num_rows
        assert "bad" not in c.collections()  # no failure above made the collection


def test_the_rpc_refuses_bad_rows_by_field(source):
    with source.channel() as ch:
        index = index_pb2_grpc.IndexServiceStub(ch)
        with Client(source.target) as c:
            embedder = c.describe("plain").embedder
        record = index_pb2.CollectionRecord(format_version=1, collection="rpc_bad", dimension=384, embedder=embedder)

        def call(*msgs):
            with pytest.raises(grpc.RpcError) as e:
                index.Import(iter(msgs), timeout=60)
            return e.value

        e = call(index_pb2.ImportRequest(rows=[index_pb2.Row(id="1", text="t", dense=b"\0" * 1536)]))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "first Import message must carry the record" in e.details()
        e = call(index_pb2.ImportRequest(record=index_pb2.CollectionRecord(format_version=3, collection="x",
                                                                           embedder="e", dimension=4)))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "format version 3" in e.details()
        e = call(index_pb2.ImportRequest(record=record),
                 index_pb2.ImportRequest(rows=[index_pb2.Row(id="a", text="fine", dense=b"\0" * 1536)]),
                 index_pb2.ImportRequest(rows=[index_pb2.Row(id="a2", text="fine", dense=b"\0" * 1536),
                                               index_pb2.Row(id="b", text="short", dense=b"\0" * 100)]))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "message 3: rows[1] (id 'b'): dense holds 100 bytes; dimension 384 needs 1536" in e.details()
        e = call(index_pb2.ImportRequest(record=record, collection="rpc_bad2", rows=[
            index_pb2.Row(id="a", text="fine", metadata_json="[1]", dense=b"\0" * 1536)]))
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "JSON object" in e.details()
        e = call(index_pb2.ImportRequest(record=record, collection="rpc_bad3", rows=[
            index_pb2.Row(id="a", text="x", dense=np.full(384, np.nan, "<f4").tobytes())]))
        assert "NaN" in e.details()
        with pytest.raises(grpc.RpcError) as ex:
            list(index.Export(index_pb2.ExportRequest(collection="nope"), timeout=30))
        assert ex.value.code() == grpc.StatusCode.NOT_FOUND
    # The server is still up; the messages before the failing one were written, and none of that one.
    with Client(source.target) as c:
        assert c.describe("rpc_bad").row_count == 1


# -- kills, resume, backup ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(exported, tmp_path_factory):
    """A 12k-row export with random vectors under the real embedder's name: import speed, not meaning."""
    record = json.loads(pq.read_table(exported / "plain.parquet").schema.metadata[b"tandem"])
    n, rng = 12_000, np.random.default_rng(0)
    v = rng.standard_normal((n, 384)).astype("f4")
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    record = {**record, "collection": "synthetic", "documents": n, "rows": n}
    schema = arrow_schema(384, False, record)
    table = pa.Table.from_arrays([pa.array([f"s{i:06d}" for i in range(n)]),
                                  pa.array([f"synthetic row {i} about wing flutter" for i in range(n)]),
                                  pa.array([json.dumps({"i": i}) for i in range(n)]),
                                  pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 384)], schema=schema)
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.parquet"
    pq.write_table(table, path)
    return path


def test_kill_9_during_import_then_rerun_resumes_and_ends_with_exactly_the_rows(synthetic, source, tmp_path):
    cache = tmp_path / "cache"
    args = [sys.executable, "-m", "tandem.cli", "import", str(synthetic), "--collection", "resumed",
            "--segment-rows", "1000", "--target", source.target]
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def progressed():
        states = list((cache / "tandem" / "imports").glob("*.json")) if (cache / "tandem").exists() else []
        return any(json.loads(s.read_text()).get("rows_done", 0) >= 2000 for s in states)

    assert wait_for(progressed, 120, every=0.02), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    with Client(source.target) as c:
        assert 2000 <= c.describe("resumed").row_count < 12_000  # part-way: the kill landed mid-import
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "resuming the import" in p.stderr and "at row" in p.stderr
    out = tmp_path / "resumed.parquet"
    subprocess.run([sys.executable, "-m", "tandem.cli", "export", "resumed", "-o", str(out), "--target",
                    source.target], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    want = {k: (v[0], v[1], v[2]) for k, v in rows_of(synthetic).items()}
    assert {k: (v[0], v[1], v[2]) for k, v in rows_of(out).items()} == want


def test_kill_9_during_export_leaves_nothing_under_the_final_name(synthetic, source, tmp_path, cache):
    with Client(source.target) as c:
        if "synthetic" not in c.collections():
            tandem("import", str(synthetic), "--target", source.target, cache=cache)
    final = tmp_path / "out.parquet"
    partial = tmp_path / "out.parquet.partial"
    proc = subprocess.Popen([sys.executable, "-m", "tandem.cli", "export", "synthetic", "-o", str(final),
                             "--page-size", "16", "--target", source.target], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(partial.exists, 120, every=0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not final.exists()
    # Run again, it completes and takes the final name.
    tandem("export", "synthetic", "-o", str(final), "--target", source.target, cache=cache)
    assert pq.read_metadata(final).num_rows == 12_000 and not partial.exists()


def test_an_export_to_a_full_disk_says_so_and_leaves_nothing_under_the_final_name(source, tmp_path, cache):
    """The export's disk (a 256 KiB tmpfs) fills part way: the command fails at once, saying which disk and what
    to do, and neither the final name nor the partial file is left behind."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        p = tandem("export", "plain", "-o", str(disk / "plain.parquet"), "--target", source.target, cache=cache,
                   check=False)
        assert p.returncode == 2, p.stderr[-2000:]
        assert "no space left on the disk that holds" in p.stderr and "nothing was written under plain.parquet" in \
            p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr and list(disk.iterdir()) == []


def test_a_backup_taken_during_upserts_restores_every_row_acknowledged_before_it(
        source, make_server, tiny_ce, tmp_path, cache):
    with Client(source.target) as c:
        c.create_collection("live")
    acked: list[str] = []
    stop = threading.Event()

    def write():
        with Client(source.target) as c:
            i = 0
            while not stop.is_set():
                batch = [{"id": f"live{i + k}", "text": f"live document {i + k} on boundary layers"} for k in range(8)]
                c.upsert("live", batch)
                acked.extend(d["id"] for d in batch)
                i += 8

    t = threading.Thread(target=write)
    t.start()
    try:
        assert wait_for(lambda: len(acked) >= 40, 120, every=0.05)
        before = set(acked)
        tandem("backup", str(tmp_path / "backup"), "--target", source.target, cache=cache)
        assert wait_for(lambda: len(acked) > len(before) + 8, 120, every=0.05)  # writes went on beside it
    finally:
        stop.set()
        t.join(60)
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    names = {e["collection"] for e in manifest["collections"]}
    assert {"plain", "chunked", "live"} <= names

    fresh = make_server("--reranker", tiny_ce, "--warmup", "false")
    before_embed = embedder_batches(fresh)
    tandem("restore", str(tmp_path / "backup"), "--target", fresh.target, cache=cache)
    assert embedder_batches(fresh) == before_embed
    with Client(fresh.target) as c:
        assert set(c.collections()) == names
        restored = set()
        record, pages = c.export("live")
        for page in pages:
            restored |= {r.id for r in page}
        assert before <= restored
        with Client(source.target) as src:
            assert c.describe("chunked").passages == src.describe("chunked").passages

